"""What PPO and RLOO share around their rounds: checked rewards, the two stops, and the run.

Rewards. A reward (the reward model's score, or the ground-truth function) that raises,
returns the wrong number of values, or gives NaN/inf is a `RewardError` naming the round and
the sample (prompt and completion, shortened). It is never replaced by a zero: a made-up
reward, or a NaN averaged into the advantages, would train on noise. `dpokit ppo` / `dpokit
rloo` print it as one line and exit 1, as for a divergence: the run started and failed
(exit 2 is for input refused before any training).

Stops (`TrainingDiverged`, exit 1, no final model):
    max_kl                 the rollout's mean KL to the reference (k1 summed over a
                           completion: nats per sample) above it (or not finite) stops the
                           round before its update; 0 = no limit
    max_consecutive_skips  that many rounds in a row in which every update was skipped
                           (non-finite loss or gradient norm)

Checkpoints. checkpoint-N holds the state after N rounds and is written at the start of round
N, once that round's rollout, sampled from exactly those weights, has passed the max_kl
check. A policy that has blown up is therefore never checkpointed, and a KL stop never prunes
the good checkpoints away for a bad one. None is written inside a streak of skipped rounds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from dpokit.data.records import one_line
from dpokit.train import checkpoint as ckpt
from dpokit.train.loop import TrainingDiverged

SHOWN_CHARS = 40  # of a prompt or completion in an error message


class RewardError(ValueError):
    """A reward that raised or was not a finite number; the message names round and sample."""


# -- rewards ----------------------------------------------------------------------------------
def _short(text: str) -> str:
    """`text` cut to SHOWN_CHARS, as a quoted one-line literal (newlines escaped)."""
    return repr(text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…")


def sample_labeller(tokenizer, batch, texts: list[str], rnd: int | None):
    """label(i): 'round R, sample i+1 of B (prompt '…', completion '…')'; label(None): the round."""
    lengths = batch.prompt_lengths.tolist()
    where = f"round {rnd + 1}" if rnd is not None else "rollout"

    def label(i: int | None) -> str:
        if i is None:
            return f"{where} ({len(texts)} samples)"
        prompt = tokenizer.decode(batch.input_ids[i, : lengths[i]].tolist())
        return f"{where}, sample {i + 1} of {len(texts)} (prompt {_short(prompt)}, completion {_short(texts[i])})"

    return label


def _floats(values, n: int) -> torch.Tensor:
    """`values` as a (n,) float64 tensor; ValueError/TypeError if they are not n numbers."""
    out = torch.as_tensor(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=torch.float64)
    if out.shape != (n,):
        raise ValueError(f"returned shape {tuple(out.shape)} for {n} completions")
    return out


def _first_raising(score_rows, n: int) -> int | None:
    """The first sample whose scoring alone raises (None: each alone is fine)."""
    for i in range(n):
        try:
            score_rows([i])
        except Exception:  # whatever the reward raised is what we are looking for
            return i
    return None


def checked_scores(score_rows, n: int, label, what: str) -> torch.Tensor:
    """(n,) float32 scores from `score_rows(list of row indices)`; RewardError (module docstring)
    when the call raises (naming the first sample that raises alone), returns other than n
    numbers, or any score is NaN/inf."""
    try:
        raw = score_rows(list(range(n)))
    except Exception as e:  # any failure of the reward's own code becomes one named error
        culprit = _first_raising(score_rows, n)
        raise RewardError(f"{label(culprit)}: {what} raised {type(e).__name__}: {one_line(str(e))}") from e
    try:
        values = _floats(raw, n)
    except Exception as e:  # torch's TypeError / ValueError / RuntimeError for what is not numbers
        raise RewardError(f"{label(None)}: {what} is not {n} numbers ({type(e).__name__}: {one_line(str(e))})") from e
    bad = [i for i, v in enumerate(values.tolist()) if not math.isfinite(v)]
    if bad:
        raise RewardError(f"{label(bad[0])}: {what} is {values[bad[0]].item()} ({len(bad)} of {n} samples not finite)")
    return values.float()


# -- stops ------------------------------------------------------------------------------------
def _good_checkpoints(run_dir: Path, before: int) -> list[Path]:
    """Checkpoints of rounds < `before`: their weights were rolled out, and passed, in a round
    before the one that failed."""
    return [p for p in ckpt.list_checkpoints(run_dir) if int(p.name[len(ckpt.PREFIX):]) < before]


def check_kl(mean_kl: float, cfg, rnd: int, run_dir: Path) -> None:
    """TrainingDiverged when round `rnd`'s mean KL passes cfg.max_kl (module docstring)."""
    if cfg.max_kl <= 0 or mean_kl <= cfg.max_kl:
        return
    kept = _good_checkpoints(run_dir, rnd)
    raise TrainingDiverged(
        f"round {rnd + 1}: mean KL to the reference {mean_kl:.4g} nats per sample exceeds max_kl={cfg.max_kl:g}; "
        f"stopped before updating on it, without a final model. Last good checkpoint: {kept[-1] if kept else 'none'}. "
        f"Raise kl_coef (now {cfg.kl_coef:g}) or lower lr (now {cfg.lr:g})"
        + (" and continue from it with --resume --force" if kept else "")
    )


def check_skips(streak: int, cfg, rnd: int, run_dir: Path) -> None:
    """TrainingDiverged after cfg.max_consecutive_skips rounds in a row without an update."""
    if streak < cfg.max_consecutive_skips:
        return
    kept = _good_checkpoints(run_dir, rnd + 1)
    raise TrainingDiverged(
        f"training diverged: rounds {rnd + 2 - streak}-{rnd + 1} ({streak} in a row = max_consecutive_skips) "
        f"had a non-finite loss or gradient in every update; stopped without a final model. "
        f"Last good checkpoint: {kept[-1] if kept else 'none'}. Lower lr (now {cfg.lr:g})"
        + (" or set max_grad_norm > 0" if cfg.max_grad_norm == 0 else "")
        + (" and continue from it with --resume --force" if kept else "")
    )


# -- the run ----------------------------------------------------------------------------------
def run_rounds(trainer, *, resume, force: bool, summary_name: str, round_line, summary_extra=dict) -> dict:
    """All rounds of `trainer` (PPOTrainer / RLOOTrainer: collect, learn, save, restore,
    round_skipped), with the checkpoints and stops of the module docstring. `resume`
    ("latest" or a checkpoint dir) and `force` as for `dpokit dpo` (dpokit.train.rundir).
    Writes metrics.jsonl and `summary_name` (`stopped`: why a stop or a reward error ended
    the run early; null for a finished run)."""
    from dpokit.config import save_config
    from dpokit.train import rundir
    from dpokit.train.metrics import MetricsWriter

    cfg, run_dir = trainer.cfg, trainer.run_dir
    path = rundir.prepare_run_dir(cfg, resume=resume, force=force, log=trainer.log)
    start = trainer.restore(path, force) if path else 0
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    writer = MetricsWriter(run_dir, resume_step=start if path else None)
    last, streak = {}, 0

    def summary(stopped: str | None = None) -> dict:
        out = {"rounds": last.get("step", start), "last": last, "stopped": stopped, **summary_extra()}
        (run_dir / summary_name).write_text(json.dumps(out, indent=2))
        return out

    try:
        for rnd in range(start, cfg.steps):
            collected = trainer.collect(rnd)
            if cfg.save_every and rnd % cfg.save_every == 0 and rnd > start and not streak:
                trainer.save(rnd)
            last = trainer.learn(rnd, collected)
            writer.write(last)
            trainer.log(round_line(last))
            streak = streak + 1 if trainer.round_skipped(last) else 0
            check_skips(streak, cfg, rnd, run_dir)
    except (TrainingDiverged, RewardError) as e:
        summary(stopped=str(e))
        raise
    finally:
        writer.close()
    return summary()
