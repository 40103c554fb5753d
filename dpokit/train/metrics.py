"""Per-step metrics, computed in one place, and the writer that records them.

Each metrics line is one JSON object in `metrics.jsonl` (and the same scalars as TensorBoard
events under `tb/`): `step`, `split` ("train" | "eval"), `loss`, `rewards/chosen`,
`rewards/rejected`, `rewards/margins`, `rewards/accuracies`, `logps/chosen`, `logps/rejected`,
`lr`, `grad_norm`, `tokens_per_s`, ...
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch


class MetricSums:
    """Pair-weighted running sums, so a step's metrics are exact means over its pairs however
    the pairs were split into micro-batches."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.pairs = 0

    def add_pairs(self, losses, chosen_rewards=None, rejected_rewards=None, chosen_logps=None, rejected_logps=None) -> None:
        values = {"loss": losses}
        if chosen_rewards is not None:
            values.update(
                {
                    "rewards/chosen": chosen_rewards,
                    "rewards/rejected": rejected_rewards,
                    "rewards/margins": chosen_rewards - rejected_rewards,
                    "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
                    "logps/rejected": rejected_logps,
                }
            )
        if chosen_logps is not None:
            values["logps/chosen"] = chosen_logps
        for name, tensor in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(tensor.detach().float().sum())
        self.pairs += int(losses.shape[0])

    def merge(self, other: "MetricSums") -> None:
        for name, value in other.sums.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.pairs += other.pairs

    def means(self) -> dict[str, float]:
        return {k: v / max(self.pairs, 1) for k, v in self.sums.items()}


class MetricsWriter:
    """Appends metric dicts to metrics.jsonl and TensorBoard. On resume the JSONL is cut back
    to the resumed step so the file reads as one uninterrupted run."""

    def __init__(self, run_dir: Path, *, resume_step: int | None = None, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            kept = [l for l in self.path.read_text().splitlines() if l.strip() and json.loads(l)["step"] <= resume_step]
            self.path.write_text("".join(l + "\n" for l in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._file = open(self.path, "a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(run_dir) / "tb"))

    def write(self, record: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._file.write(json.dumps(clean) + "\n")
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
