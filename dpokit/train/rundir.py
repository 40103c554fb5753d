"""What a run may do to its output directory, decided before anything is written to it.

    <run>/
        config.yaml, data_report.json   rewritten by every start of the run
        metrics.jsonl, tb/                 the run's records (on resume cut back to the resumed step)
        checkpoint-000040/                 see dpokit.train.checkpoint
        final/                             the trained model
        train_summary.json

A fresh start (no --resume) into a directory that already holds a run (a non-empty
metrics.jsonl, a train_summary.json, a checkpoint or a final/) is refused: it would delete
that run's metrics and replace its model. `force` replaces it instead (those entries are
removed first, so a later `--resume` cannot pick up the old run's checkpoints). A directory
holding only what every start rewrites (config.yaml, data_report.json, an empty
metrics.jsonl, tb/ of a run that logged nothing) is not a run: a start that failed before its
first metrics line can simply be repeated.

A resume checks that the checkpoint was made on the same tokenized training data (content,
order, votes) and the same trajectory-shaping config keys (all but NON_TRAJECTORY_KEYS);
`force` resumes anyway.

Never allowed, forced or not: `model` / `ref_model` inside `<run>/final` or a checkpoint of
the run, which the run replaces or prunes while it still needs them.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

from dpokit.config import ConfigError, without_later_defaults
from dpokit.train.checkpoint import PREFIX, CheckpointError, list_checkpoints

# Settings a resume may change: they cannot change the numbers of a run, or their whole effect
# is the tokenized training data, which is fingerprinted itself.
NON_TRAJECTORY_KEYS = frozenset({
    "output_dir", "cache_dir", "progress", "log_every", "eval_every", "save_every", "keep_checkpoints",
    "tune_malloc", "max_consecutive_skips", "gradient_checkpointing",
    "mixed_precision",  # resolved into autocast_bf16, which is compared
    "data", "split", "eval_data", "eval_fraction", "on_malformed", "max_length", "max_prompt_length", "prompt_overflow",
})
# How a step's pairs are split into micro-batches and ranks (run_identity keeps their product).
MICRO_BATCHING_KEYS = frozenset({"batch_size", "grad_accum", "microbatch_tokens"})
TEMP_DIR = re.compile(r"^\.(?P<name>checkpoint-\d+|final)\.(?P<kind>tmp|old|del)-(?P<pid>\d+)$")
OWNED_DIR = re.compile(rf"^(final|{PREFIX}\d+)$")


def clean_temp_dirs(run_dir: Path, log=print) -> list[str]:
    """Remove what a killed checkpoint/final write or checkpoint prune left behind (see
    checkpoint.atomic_directory and prune_checkpoints).

    One case is finished work, not debris: killed between the two renames of a replacement,
    NAME is missing and `.NAME.old-PID` (the replaced version) exists; `.NAME.tmp-PID` is then
    complete (renames start only after the write and its fsync) and is put in place, else the
    old version goes back."""
    removed = []
    for p in sorted(Path(run_dir).iterdir()):  # ".X.old-N" sorts before ".X.tmp-N"
        m = TEMP_DIR.match(p.name)
        if not m or not p.exists():
            continue
        target, new = p.parent / m["name"], p.parent / f".{m['name']}.tmp-{m['pid']}"
        if m["kind"] == "old" and not target.exists():
            (new if new.is_dir() else p).rename(target)
            log(f"completed the interrupted replacement of {target}")
        if p.exists():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            removed.append(p.name)
    if removed:
        log(f"removed {len(removed)} unfinished write(s) of an interrupted run from {run_dir}: {', '.join(removed)}")
    return removed


def previous_run(run_dir: Path) -> list[Path]:
    """Entries of `run_dir` that belong to an earlier run (see the module docstring)."""
    if not Path(run_dir).is_dir():
        return []
    found = []
    for p in sorted(Path(run_dir).iterdir()):
        if p.is_dir() and OWNED_DIR.match(p.name):
            found.append(p)
        elif p.name in ("metrics.jsonl", "train_summary.json") and p.is_file() and p.stat().st_size > 0:
            found.append(p)
    return found


def _refuse_inputs_inside(cfg, run_dir: Path) -> None:
    root = run_dir.resolve()
    for key in ("model", "ref_model", "reward_model", "value_model"):
        value = getattr(cfg, key, None)
        if not value or not Path(value).expanduser().exists():
            continue  # an alias or hub id, not a directory of this run
        try:
            first = Path(value).expanduser().resolve().relative_to(root).parts[0]
        except (ValueError, IndexError):
            continue
        if OWNED_DIR.match(first):
            raise ConfigError(
                f"{key}={value} lies in {run_dir / first}, which this run replaces or prunes; "
                "copy the model elsewhere or pick another output_dir"
            )


def find_checkpoint(run_dir: Path, resume) -> Path:
    """The checkpoint `resume` names: "latest" (or True) = the newest one in `run_dir`."""
    if resume is True or resume in ("", "latest"):
        found = list_checkpoints(run_dir)
        if not found:
            raise CheckpointError(f"--resume: no checkpoint in {run_dir} yet (they are written every save_every steps)")
        return found[-1]
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"--resume {resume}: no such checkpoint directory")
    return path


def prepare_run_dir(cfg, *, resume=None, force: bool = False, log=print) -> Path | None:
    """Check and tidy `cfg.output_dir` for a start; returns the checkpoint to resume from
    (None for a fresh start). Cheap: call it before loading models or data."""
    run_dir = Path(cfg.output_dir)
    _refuse_inputs_inside(cfg, run_dir)
    if run_dir.is_dir():
        clean_temp_dirs(run_dir, log)
    if resume:
        return find_checkpoint(run_dir, resume)
    previous = previous_run(run_dir)
    if previous and not force:
        names = ", ".join(p.name for p in previous[:4]) + (", ..." if len(previous) > 4 else "")
        raise ConfigError(
            f"output_dir {run_dir} already holds a run ({names}); resume it with --resume, "
            "replace it with --force, or pick a new output_dir"
        )
    for p in previous + ([run_dir / "tb"] if previous else []):
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    if previous:
        log(f"--force: removed the previous run in {run_dir} ({', '.join(p.name for p in previous)})")
    return None


# -- what a resume must match -----------------------------------------------------------------
def run_identity(cfg, data, *, pairs_per_step: int | None = None) -> dict:
    """Fingerprints stored in state.json: the training data as the loop sees it (tokens, list
    order, which fixes the step order, and votes) and the trajectory-shaping config. The batch
    enters as the pairs of one optimizer step over all ranks, not as batch_size × grad_accum on
    each: a run resumes on another number of processes, or with another micro-batching, when
    its steps still take the same pairs."""
    from dpokit.models import new_hasher
    from dpokit.reference import data_fingerprint

    hasher = new_hasher()
    hasher.update(data_fingerprint(data.train).encode())
    hasher.update(json.dumps([p.index for p in data.train]).encode())
    hasher.update(json.dumps(sorted((int(k), list(v)) for k, v in data.train_votes.items())).encode())
    if data.train_labels:  # KTO's desirable / undesirable labels
        hasher.update(json.dumps(sorted((int(k), bool(v)) for k, v in data.train_labels.items())).encode())
    # without_later_defaults: a checkpoint from before lora.layers existed still resumes
    config = without_later_defaults({k: v for k, v in dataclasses.asdict(cfg).items()
                                     if k not in NON_TRAJECTORY_KEYS | MICRO_BATCHING_KEYS})
    config["pairs_per_step"] = pairs_per_step or cfg.batch_size * cfg.grad_accum
    # Through JSON, so it compares equal to what state.json gives back.
    return {"data_fingerprint": hasher.hexdigest(), "train_pairs": len(data.train), "config": json.loads(json.dumps(config))}


def resume_mismatches(state: dict, now: dict) -> list[str]:
    """What differs between a checkpoint's state.json and this run, in words."""
    out = []
    if state["data_fingerprint"] != now["data_fingerprint"]:
        out.append(f"training data ({state['train_pairs']} pairs then, {now['train_pairs']} now; tokens, order or votes differ)")
    then, cur = state["config"], now["config"]
    for key in sorted(then.keys() | cur.keys()):
        if then.get(key) != cur.get(key):
            out.append(f"{key} {then.get(key)!r} -> {cur.get(key)!r}")
    return out
