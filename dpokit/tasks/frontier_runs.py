"""Finished runs of a frontier sweep, kept so that `dpokit run frontier --resume` redoes only
what changed or never finished.

The sweep is a dozen runs (the reward model, each DPO β, each PPO and RLOO coefficient,
Best-of-N, ...) and takes hours; an interruption should cost the run it hit, not the sweep.
Each run, when it ends, writes `<run dir>/frontier_run.json`: what it produced (its frontier
points, and any report) and the key of everything it depended on: its own settings, the
evaluation settings, the reference model's fingerprint, the pairs file, the reward model's key.
A resumed sweep reuses a run whose key is unchanged and redoes the others; a run that was
interrupted wrote no file and is redone from its start. The file is written whole (a temporary
file renamed over it), so a kill leaves either the old file or the new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from dpokit.config import without_later_defaults

RUN_FILE = "frontier_run.json"


# Settings added to the configs after runs were stored, whose default reproduces what those
# runs did: left out of a run's settings while at that default, so adding an option does not
# turn every finished run into a changed one (a non-default value is part of the key).
LATER_SETTINGS = {"mixed_precision": "auto", "kto_desirable_weight": 1.0, "kto_undesirable_weight": 1.0,
                  "rrhf_rank_weight": 100.0}


def settings_of(cfg) -> dict:
    """A run's config as its key sees it: every field, less LATER_SETTINGS (and the config's own
    LATER_DEFAULTS, e.g. RLOOConfig.rollout_bf16) at their defaults."""
    import dataclasses

    later = {**LATER_SETTINGS, **getattr(cfg, "LATER_DEFAULTS", {})}
    # and keys inside sections (lora.layers) by the same rule
    return without_later_defaults({k: v for k, v in dataclasses.asdict(cfg).items()
                                   if not (k in later and v == later[k])})


def key_of(*parts) -> str:
    """A short digest of JSON-able parts (dict order does not matter)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (the pairs a run trained on)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:24]


class FinishedRuns:
    """`run(name, key, compute)`: the stored result of run `name` when resuming and its key
    matches, else `compute()` (a JSON-able dict), stored under that key."""

    def __init__(self, root: str | os.PathLike, *, resume: bool, log=print):
        self.root, self.resume, self.log = Path(root), resume, log
        self.reused: list[str] = []
        self.finished: dict[tuple[str, str], dict] = {}  # (name, key) → result, of this sweep
        self.wall_s: dict[str, float] = {}  # each run's own wall time, reused runs included

    def get(self, name: str, key: str, intact=None) -> dict | None:
        """The stored result, or None (not resuming, never finished, changed, or `intact(result)`
        says files it points to are gone)."""
        path = self.root / name / RUN_FILE
        if not self.resume or not path.exists():
            return None
        try:
            stored = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            self.log(f"{name}: {path} unreadable ({e}); the run is redone")
            return None
        if not isinstance(stored, dict) or not isinstance(stored.get("result"), dict):
            self.log(f"{name}: {path} is not a finished-run file; the run is redone")
            return None
        if stored.get("key") != key:
            self.log(f"{name}: its settings or inputs changed since it ran; the run is redone")
            return None
        if intact is not None and not intact(stored["result"]):
            self.log(f"{name}: files of the finished run are missing; the run is redone")
            return None
        self.log(f"{name}: reusing the finished run ({path})")
        self.reused.append(name)
        self.wall_s[name] = float(stored.get("wall_s") or 0.0)
        return stored["result"]

    def put(self, name: str, key: str, result: dict, wall_s: float = 0.0) -> None:
        path = self.root / name / RUN_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{RUN_FILE}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, "result": result, "wall_s": wall_s}, indent=1))
        os.replace(tmp, path)

    def run(self, name: str, key: str, compute, intact=None) -> dict:
        """A run asked for twice in one sweep (the stability study's first seed is the main
        run) is computed once."""
        if (name, key) in self.finished:
            return self.finished[name, key]
        result = self.get(name, key, intact)
        if result is None:
            started = time.perf_counter()
            result = compute()
            self.wall_s[name] = time.perf_counter() - started
            self.put(name, key, result, self.wall_s[name])
        self.finished[name, key] = result
        return result
