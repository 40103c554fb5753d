"""Checkpoints of the online RL trainers (PPO, RLOO): their models, their one optimizer and
state.json, built from dpokit.train.checkpoint's pieces (atomic write, pickle refusal, checked
reads).

    <run>/checkpoint-000004/
        policy/                 safetensors weights (full model, or the LoRA adapter) + tokenizer
        value/                  PPO's value model (RLOO has none)
        optimizer.safetensors   the optimizer's tensors; optimizer.json the rest
        state.json              format, kind ("ppo" / "rloo"), step (= rounds done), the
                                trainer's own state (PPO: its KL controller), and the run's
                                identity: the config keys a round depends on and a fingerprint
                                of the prompt list

No RNG state: every draw of a round is seeded by the round number. Every file is read and
checked (`read`) before anything is restored (`apply`), so a refused checkpoint changes nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from dpokit.train import checkpoint as ckpt


@dataclass
class OnlineCheckpoint:
    """A checkpoint read and checked, not yet applied."""

    path: Path
    state: dict
    weights: dict  # model name -> state dict
    optimizer: dict


def identity(cfg, prompts: list) -> dict:
    """What a resumed round depends on besides the checkpoint: the config keys outside
    `cfg.NON_TRAJECTORY_KEYS` (through JSON, as state.json gives them back) and the prompts.
    Keys of `cfg.LATER_DEFAULTS` at their default are left out: a checkpoint written before
    such a key existed still resumes."""
    later = getattr(cfg, "LATER_DEFAULTS", {})
    keys = {k: v for k, v in dataclasses.asdict(cfg).items()
            if k not in cfg.NON_TRAJECTORY_KEYS and not (k in later and v == later[k])}
    digest = hashlib.sha256(json.dumps(prompts).encode()).hexdigest()  # ASCII: \u escapes
    return {"config": json.loads(json.dumps(keys)), "prompts": {"count": len(prompts), "sha256": digest}}


def save(run_dir: Path, rnd: int, *, kind: str, models: dict, tokenizer, optimizer, extra: dict, ident: dict,
         keep: int) -> Path:
    """Write checkpoint-<rnd> (layout in the module docstring), then prune to the newest `keep`."""
    from dpokit.models import save_model

    for model in models.values():
        ckpt.assert_finite_parameters(model)

    def write(tmp: Path) -> None:
        for name, model in models.items():
            save_model(model, tokenizer, tmp / name)
        ckpt.write_optimizer(optimizer, tmp)
        state = {"format": ckpt.FORMAT, "kind": kind, "step": rnd, **extra, **ident}
        (tmp / ckpt.STATE_JSON).write_text(json.dumps(state, indent=2))

    out = ckpt.atomic_directory(Path(run_dir) / f"{ckpt.PREFIX}{rnd:06d}", write)
    ckpt.prune_checkpoints(run_dir, keep)
    return out


def _mismatches(state: dict, ident: dict) -> list[str]:
    """What differs between a checkpoint's identity and this run's, in words."""
    out = []
    then, now = state.get("prompts"), ident["prompts"]
    if then != now:
        count = then.get("count", "?") if isinstance(then, dict) else "?"
        out.append(f"prompts ({count} then, {now['count']} now, or other text)")
    saved = state.get("config") if isinstance(state.get("config"), dict) else {}
    for key in sorted(set(saved) | set(ident["config"])):
        if saved.get(key) != ident["config"].get(key):
            out.append(f"{key} {saved.get(key)!r} -> {ident['config'].get(key)!r}")
    return out


def read(path: Path, *, kind: str, names: tuple[str, ...], optimizer, ident: dict, force: bool = False) -> OnlineCheckpoint:
    """Read and check checkpoint `path` of a `kind` run; changes nothing. A checkpoint of
    other settings or prompts is refused unless `force`."""
    path = Path(path)
    if not path.is_dir():
        raise ckpt.CheckpointError(f"{path}: no such checkpoint directory")
    ckpt.refuse_pickles(path)
    state = ckpt.read_json(path / ckpt.STATE_JSON)
    step = state.get("step")
    if state.get("kind") != kind or state.get("format") != ckpt.FORMAT or not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ckpt.CheckpointError(f"{path / ckpt.STATE_JSON}: not a {kind.upper()} checkpoint of this dpokit (kind, format, step)")
    changed = _mismatches(state, ident)
    if changed and not force:
        raise ckpt.CheckpointError(f"{path}: made with other settings ({'; '.join(changed)}); --force resumes anyway")
    weights = {name: ckpt.read_weights(path / name) for name in names}
    return OnlineCheckpoint(path, state, weights, ckpt.read_optimizer(path, optimizer))


def apply(ck: OnlineCheckpoint, models: dict, optimizer) -> None:
    """Put a read checkpoint's weights and optimizer state in place. The optimizer's settings
    (lr, betas, ...) stay the run's own, as its config built them: a resume with --force and a
    new lr (the advice after a stop) trains at that lr, not at the checkpoint's. Unforced, the
    two agree anyway (they are part of the identity checked by `read`)."""
    for name, model in models.items():
        ckpt.load_trainable_state(model, ck.weights[name], ck.path / name)
    settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    try:
        optimizer.load_state_dict(ck.optimizer)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ckpt.CheckpointError(f"{ck.path / ckpt.OPTIMIZER_JSON}: does not fit the optimizer ({e})") from None
    for group, own in zip(optimizer.param_groups, settings):
        group.update(own)
