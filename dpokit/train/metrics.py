"""Per-step metrics, computed in one place, and the writer that records them.

Each metrics line is one JSON object in `metrics.jsonl` (and the same scalars as TensorBoard
events under `tb/`): `step`, `split` ("train" | "eval"), `loss`, `rewards/chosen`,
`rewards/rejected`, `rewards/margins`, `rewards/accuracies`, `logps/chosen`, `logps/rejected`,
`lr`, `grad_norm`, `tokens_per_s`, ..., `skipped` (true: the loss or gradient was not finite
and no update was made; such a line is always written, and its `loss` is null when the loss
itself was not finite). Non-finite numbers are written as null.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch


# Every name MetricSums can hold (summed across ranks in this order). KTO's: the implicit reward
# β·log π/π_ref of the desirable and of the undesirable completions, and the step's reference
# point z0 (dpokit.losses_unpaired).
METRIC_NAMES = (
    "loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected",
    "rewards/desirable", "rewards/undesirable", "kto/z0", "rrhf/rank", "rrhf/ft",
)


class MetricSums:
    """Running sums and counts per metric, so a step's metrics are exact means over its pairs
    (or, for a metric of some of them, e.g. KTO's desirable completions, over those) however
    the pairs were split into micro-batches or data-parallel ranks (`summed_across`)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    @property
    def pairs(self) -> int:
        return self.counts.get("loss", 0)

    def add(self, name: str, values) -> None:
        """Add every element of `values` (a tensor) to metric `name`."""
        self.sums[name] = self.sums.get(name, 0.0) + float(values.detach().float().sum())
        self.counts[name] = self.counts.get(name, 0) + int(values.numel())

    def add_pairs(self, losses, chosen_rewards=None, rejected_rewards=None, chosen_logps=None, rejected_logps=None) -> None:
        values = {"loss": losses}
        if chosen_rewards is not None:
            values.update(
                {
                    "rewards/chosen": chosen_rewards,
                    "rewards/rejected": rejected_rewards,
                    "rewards/margins": chosen_rewards - rejected_rewards,
                    "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
                }
            )
        if chosen_logps is not None:
            values["logps/chosen"] = chosen_logps
        if rejected_logps is not None:
            values["logps/rejected"] = rejected_logps
        for name, tensor in values.items():
            self.add(name, tensor)

    def merge(self, other: "MetricSums") -> None:
        for name, value in other.sums.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
            self.counts[name] = self.counts.get(name, 0) + other.counts[name]

    def summed_across(self, placement) -> "MetricSums":
        """The sums and counts over every rank (self in one process): one all-reduce per step."""
        if placement.world_size == 1:
            return self
        from dpokit import accel

        k = len(METRIC_NAMES)
        local = [self.sums.get(n, 0.0) for n in METRIC_NAMES] + [float(self.counts.get(n, 0)) for n in METRIC_NAMES]
        total = accel.sum_across(torch.tensor(local, dtype=torch.float64), placement).tolist()
        out = MetricSums()
        out.sums = {n: total[i] for i, n in enumerate(METRIC_NAMES) if total[k + i] > 0}
        out.counts = {n: int(total[k + i]) for i, n in enumerate(METRIC_NAMES) if total[k + i] > 0}
        return out

    def means(self) -> dict[str, float]:
        return {k: v / max(self.counts[k], 1) for k, v in self.sums.items()}


def json_safe(record: dict) -> dict:
    """NaN/inf floats as None (JSON null): a skipped step's loss, an empty step's grad norm."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def _step_of(line: str) -> int | None:
    try:
        step = json.loads(line).get("step")
    except (json.JSONDecodeError, AttributeError):
        return None  # a line torn by a kill mid-write
    return step if isinstance(step, int) else None


class MetricsWriter:
    """Appends metric dicts to metrics.jsonl and TensorBoard.

    On resume both are cut back to the resumed step, so they read as one uninterrupted run
    (a line torn by a kill is dropped). A fresh start never deletes an earlier run's metrics:
    a non-empty metrics.jsonl is refused (dpokit.train.rundir decides before this is reached)."""

    def __init__(self, run_dir: Path, *, resume_step: int | None = None, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            lines = [(l, _step_of(l)) for l in self.path.read_text().splitlines()]
            kept = [l for l, step in lines if step is not None and step <= resume_step]
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(l + "\n" for l in kept))
            tmp.replace(self.path)  # a kill while cutting back leaves the old file, not half of it
        elif resume_step is None and self.path.exists() and self.path.stat().st_size > 0:
            raise FileExistsError(f"{self.path} holds an earlier run's metrics; not overwriting them")
        self._file = open(self.path, "a" if resume_step is not None else "w")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events logged after the resumed step (or all, on a fresh start).
            purge = 0 if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=purge)

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(json_safe(record)) + "\n")
        self._file.flush()
        if self._tb is not None:
            prefix = record.get("split", "train")
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                    self._tb.add_scalar(f"{prefix}/{key}", value, record["step"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]


def grad_norm(parameters) -> float:
    norms = [p.grad.detach().float().norm() for p in parameters if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0
