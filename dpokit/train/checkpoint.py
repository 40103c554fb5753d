"""Checkpoints: safetensors for tensors, JSON for everything else, written atomically.

    <run>/checkpoint-000040/
        model/                  safetensors weights (full model, or the LoRA adapter) + tokenizer
        optimizer.safetensors   per-parameter optimizer tensors, keyed "<param index>.<name>"
                                (AdamW: step, exp_avg, exp_avg_sq)
        optimizer.json          param groups (lr, betas, ...) and any non-tensor per-parameter state
        scheduler.json          LR scheduler state dict
        rng.safetensors         torch generator states ("torch", and "cuda.<i>" on a GPU)
        rng.json                python `random` and numpy generator states
        state.json              step, skipped steps, fingerprints of the training data and of the
                                config keys that shape the trajectory (a resume checks them)
        config.yaml             the resolved run config, for people (a resume does not read it)

Under FSDP the weights and optimizer tensors are shards instead (`"layout": "sharded"` in
state.json): written and restored by dpokit.train.checkpoint_sharded, read and checked here
(`read_checkpoint(..., sharded=True)`).

Nothing is pickled, and nothing pickled is read: unpickling runs arbitrary code, so a checkpoint
holding a pickle-format file (.pt, .bin, .pkl, ...) is refused, not loaded. Every file is checked
for what it must hold (keys, types, shapes) before anything is restored; a defect is a
`CheckpointError` naming the file.

Writes go to `.checkpoint-000040.tmp-PID`; every file and directory in it is fsynced, then it
is renamed into place and the run directory fsynced, so neither a kill nor a power cut leaves a
renamed but incomplete checkpoint. A kill mid-write (or mid-prune) leaves a hidden
`.NAME.tmp-PID` (`.old-PID`, `.del-PID`) directory behind; `dpokit.train.rundir.clean_temp_dirs`
removes it at the next start.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from dpokit.config import save_config

PREFIX = "checkpoint-"
FORMAT = 2  # 1 was torch.save pickles; refused
OPTIMIZER_TENSORS, OPTIMIZER_JSON = "optimizer.safetensors", "optimizer.json"
SCHEDULER_JSON, RNG_TENSORS, RNG_JSON, STATE_JSON = "scheduler.json", "rng.safetensors", "rng.json", "state.json"
SHARDED, SHARDED_MODEL, SHARDED_OPTIMIZER = "sharded", "model-shards", "optimizer-shards"  # FSDP's layout
PICKLE_SUFFIXES = {".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt"}
# What state.json must hold, by example value (types are checked against these).
STATE_SCHEMA = {"format": 0, "step": 0, "skipped_steps": 0, "train_pairs": 0, "total_steps": 0, "data_fingerprint": "", "config": {}}


class CheckpointError(ValueError):
    """A checkpoint (or --resume request) that cannot be used; the message names the file."""


@dataclass
class Checkpoint:
    """A checkpoint read and checked, not yet applied to anything."""

    path: Path
    state: dict
    weights: dict
    optimizer: dict
    scheduler: dict
    rng: dict


# -- writing ------------------------------------------------------------------------------
def assert_finite_parameters(model) -> None:
    """Refuse to save weights that contain NaN or inf."""
    for name, p in model.named_parameters():
        if p.requires_grad and not torch.isfinite(p).all():
            raise FloatingPointError(f"parameter {name} holds NaN/inf; not saving a checkpoint")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)  # a directory too: fsync on it makes its entries durable
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            _fsync(Path(dirpath) / name)
        _fsync(Path(dirpath))


def _fresh_temp(final: Path, pid: int) -> Path:
    tmp = final.parent / f".{final.name}.tmp-{pid}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _commit(tmp: Path, final: Path, pid: int) -> Path:
    """Flush `tmp` to disk, then move it to `final` (an older one renamed to `.NAME.old-PID`
    first, removed after)."""
    _fsync_tree(tmp)
    old = final.parent / f".{final.name}.old-{pid}"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    _fsync(final.parent)
    if old.exists():
        shutil.rmtree(old)
    return final


def atomic_directory(final: Path, write) -> Path:
    """Call `write(tmp_dir)`, flush it to disk, then move tmp_dir to `final` (replacing an older
    one: renamed to `.NAME.old-PID` first, removed after; see rundir.clean_temp_dirs)."""
    final, pid = Path(final), os.getpid()
    tmp = _fresh_temp(final, pid)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _commit(tmp, final, pid)


def save_final_model(model, tokenizer, out_dir: Path, cfg=None, extra_files: dict | None = None) -> Path:
    """The trained model, loadable with plain `from_pretrained` (or peft for an adapter)."""
    from dpokit.models import save_model

    assert_finite_parameters(model)

    def write(tmp: Path) -> None:
        save_model(model, tokenizer, tmp)
        if cfg is not None:
            save_config(cfg, tmp / "dpokit_config.yaml")
        for name, content in (extra_files or {}).items():
            (tmp / name).write_text(content)

    return atomic_directory(out_dir, write)


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2))


def _optimizer_files(state_dict: dict) -> tuple[dict, dict]:
    """(tensors, JSON) of an optimizer state dict."""
    tensors, other = {}, {}
    for index, entry in state_dict["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                other.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "state": other}


def write_optimizer(optimizer, folder: Path) -> None:
    """The optimizer's state as OPTIMIZER_TENSORS + OPTIMIZER_JSON in `folder`."""
    tensors, meta = _optimizer_files(optimizer.state_dict())
    save_file(tensors, str(Path(folder) / OPTIMIZER_TENSORS))
    _write_json(Path(folder) / OPTIMIZER_JSON, meta)


def _rng_files() -> tuple[dict, dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    return tensors, {"python": random.getstate(), "numpy": numpy_state}


def save_checkpoint(run_dir: Path, step: int, *, model, tokenizer, optimizer, scheduler, state: dict, cfg) -> Path:
    """Write checkpoint-<step> (layout in the module docstring); `state` goes to state.json."""
    from dpokit.models import save_model

    assert_finite_parameters(model)

    def write(tmp: Path) -> None:
        save_model(model, tokenizer, tmp / "model")
        write_optimizer(optimizer, tmp)
        _write_run_state(tmp, scheduler=scheduler, state=state, cfg=cfg, step=step)

    return atomic_directory(Path(run_dir) / f"{PREFIX}{step:06d}", write)


def _write_run_state(tmp: Path, *, scheduler, state: dict, cfg, step: int) -> None:
    _write_json(tmp / SCHEDULER_JSON, scheduler.state_dict())
    tensors, meta = _rng_files()
    save_file(tensors, str(tmp / RNG_TENSORS))
    _write_json(tmp / RNG_JSON, meta)
    save_config(cfg, tmp / "config.yaml")
    _write_json(tmp / STATE_JSON, {**state, "format": FORMAT, "step": step})


def list_checkpoints(run_dir: Path) -> list[Path]:
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return []
    return sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / STATE_JSON).exists())


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints. Each is renamed to `.NAME.del-PID` first:
    a kill mid-delete then leaves debris the next start removes, not a half checkpoint."""
    if keep <= 0:
        return
    for old in list_checkpoints(run_dir)[:-keep]:
        doomed = old.parent / f".{old.name}.del-{os.getpid()}"
        old.rename(doomed)
        shutil.rmtree(doomed)


# -- reading: every file checked before anything is restored --------------------------------
def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _read_tensors(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own SafetensorError (or OSError) on a damaged file
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def _same_kind(saved, example) -> bool:
    if example is None or saved is None:
        return True  # optional values (e.g. a scheduler's lr_lambdas entries)
    if isinstance(example, bool) or isinstance(saved, bool):
        return isinstance(saved, bool) and isinstance(example, bool)
    if isinstance(example, float):
        return isinstance(saved, (int, float))
    if isinstance(example, (list, tuple)):
        return isinstance(saved, list)
    return isinstance(saved, type(example))


def _check_like(saved: dict, example: dict, path: Path, where: str = "") -> None:
    """Every key of `example` present in `saved` with a value of the same kind."""
    for key, value in example.items():
        if key not in saved:
            raise CheckpointError(f"{path}: missing key {where}{key!r}")
        if not _same_kind(saved[key], value):
            raise CheckpointError(f"{path}: {where}{key!r} is {type(saved[key]).__name__}, expected {type(value).__name__}")


def _optimizer_groups(meta: dict, optimizer, path: Path) -> list[dict]:
    groups, current = meta.get("param_groups"), optimizer.state_dict()["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(current) or not all(isinstance(g, dict) for g in groups):
        raise CheckpointError(f"{path}: 'param_groups' must list {len(current)} group(s) like the optimizer's")
    for i, (saved, now) in enumerate(zip(groups, current)):
        _check_like(saved, now, path, f"param_groups[{i}].")
        if saved["params"] != now["params"]:
            raise CheckpointError(f"{path}: param_groups[{i}] lists other parameters than this model's optimizer")
        for key, value in now.items():  # JSON made tuples (betas) lists
            if isinstance(value, tuple) and isinstance(saved[key], list):
                saved[key] = tuple(saved[key])
    return groups


def read_optimizer(folder: Path, optimizer) -> dict:
    """The optimizer's state dict rebuilt from its two files, checked against `optimizer`."""
    tpath, jpath = folder / OPTIMIZER_TENSORS, folder / OPTIMIZER_JSON
    tensors, meta = _read_tensors(tpath), read_json(jpath)
    groups = _optimizer_groups(meta, optimizer, jpath)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    state: dict[int, dict] = {}
    for key, tensor in tensors.items():
        index, _, name = key.partition(".")
        if not index.isdigit() or int(index) >= len(params) or not name:
            raise CheckpointError(f"{tpath}: unexpected tensor {key!r} (the optimizer has {len(params)} parameters)")
        shape = tuple(params[int(index)].shape)
        if tensor.dim() and tuple(tensor.shape) != shape:  # 0-dim: step counters
            raise CheckpointError(f"{tpath}: {key!r} has shape {tuple(tensor.shape)}, parameter {index} has {shape}")
        state.setdefault(int(index), {})[name] = tensor
    extra = meta.get("state", {})
    if not isinstance(extra, dict):
        raise CheckpointError(f"{jpath}: 'state' must map parameter indices to objects")
    for index, entry in extra.items():
        if not index.isdigit() or int(index) >= len(params) or not isinstance(entry, dict):
            raise CheckpointError(f"{jpath}: 'state' must map parameter indices to objects, found {index!r}")
        state.setdefault(int(index), {}).update(entry)
    kinds = {tuple(sorted(entry)) for entry in state.values()}
    if len(kinds) > 1:
        raise CheckpointError(f"{tpath}: parameters hold different state entries {sorted(kinds)}: some are missing")
    return {"state": state, "param_groups": groups}


def _python_rng(saved) -> tuple:
    version, internal, gauss = saved  # JSON made the tuples lists
    return version, tuple(internal), gauss


def _numpy_rng(saved) -> tuple:
    return saved["kind"], np.asarray(saved["keys"], dtype=np.uint32), saved["pos"], saved["has_gauss"], saved["cached_gaussian"]


def _rng_state(folder: Path) -> dict:
    tpath, jpath = folder / RNG_TENSORS, folder / RNG_JSON
    tensors, meta = _read_tensors(tpath), read_json(jpath)
    _check_like(meta, {"python": [], "numpy": {}}, jpath)
    rng = {"cuda": [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]}
    # Each state is tried on a scratch generator before the real ones are touched.
    for name, path, parse, check in (
        ("python", jpath, lambda: _python_rng(meta["python"]), lambda s: random.Random().setstate(s)),
        ("numpy", jpath, lambda: _numpy_rng(meta["numpy"]), lambda s: np.random.RandomState().set_state(s)),
        ("torch", tpath, lambda: tensors["torch"], lambda s: torch.Generator().set_state(s)),
    ):
        try:
            rng[name] = parse()
            check(rng[name])
        except Exception as e:  # whatever a generator rejects a state with (numpy: even IndexError)
            raise CheckpointError(f"{path}: not a valid {name} RNG state ({type(e).__name__}: {e})") from None
    return rng


def refuse_pickles(folder: Path) -> None:
    for p in sorted(folder.rglob("*")):
        if p.suffix in PICKLE_SUFFIXES:
            raise CheckpointError(
                f"{p}: pickle-format file in a checkpoint; dpokit never loads pickles (they can run code). "
                "Its checkpoints hold only safetensors and JSON: this one is from an older dpokit or was altered"
            )


def read_weights(model_dir: Path) -> dict:
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{model_dir}: no safetensors weights")
    state = {}
    for f in files:
        state.update(_read_tensors(f))
    return state


def read_checkpoint(path: Path, optimizer, scheduler, *, sharded: bool = False) -> Checkpoint:
    """Read and check every file of checkpoint `path` against the run's optimizer and scheduler
    (refusing pickles); changes nothing. `sharded`: the run is FSDP and reads the sharded layout
    (its weights and optimizer tensors are loaded later, by `checkpoint_sharded.restore_sharded`)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    refuse_pickles(path)
    state = read_json(path / STATE_JSON)
    _check_like(state, STATE_SCHEMA, path / STATE_JSON)
    if state["format"] != FORMAT:
        raise CheckpointError(f"{path / STATE_JSON}: checkpoint format {state['format']}; this dpokit reads format {FORMAT} only (safetensors + JSON)")
    if state["step"] < 0 or state["skipped_steps"] < 0:
        raise CheckpointError(f"{path / STATE_JSON}: step and skipped_steps must be >= 0")
    if (state.get("layout") == SHARDED) != sharded:
        raise CheckpointError(
            f"{path}: written by " + ("an FSDP run (sharded); resume it with the FSDP launch config, on any number of processes"
                                      if not sharded else "a DDP or one-process run (full state); resume it without the FSDP launch config")
        )
    sched = read_json(path / SCHEDULER_JSON)
    _check_like(sched, scheduler.state_dict(), path / SCHEDULER_JSON)
    if sharded:
        for folder in (SHARDED_MODEL, SHARDED_OPTIMIZER):
            if not list((path / folder).glob("*.safetensors")):
                raise CheckpointError(f"{path / folder}: no safetensors shards")
        rest = read_json(path / OPTIMIZER_JSON).get("by_name")
        if not isinstance(rest, dict):
            raise CheckpointError(f"{path / OPTIMIZER_JSON}: missing key 'by_name'")
        return Checkpoint(path, state, {}, rest, sched, _rng_state(path))
    return Checkpoint(path, state, read_weights(path / "model"), read_optimizer(path, optimizer), sched, _rng_state(path))


# -- restoring ------------------------------------------------------------------------------
def load_trainable_state(model, weights: dict, where: Path) -> None:
    """Load weights saved by `save_model` into an already-built model (same architecture,
    same LoRA settings)."""
    from dpokit.models import is_peft_model

    try:
        if is_peft_model(model):
            from peft import set_peft_model_state_dict

            unexpected = getattr(set_peft_model_state_dict(model, weights), "unexpected_keys", [])
            missing = []
        else:
            missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # shapes that do not match
        raise CheckpointError(f"{where}: weights do not fit the model ({str(e).splitlines()[-1].strip()})") from None
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise CheckpointError(f"{where}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")


def _restore_scheduler_and_rng(ck: Checkpoint, scheduler) -> None:
    try:
        scheduler.load_state_dict(ck.scheduler)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{ck.path / SCHEDULER_JSON}: does not fit the {type(scheduler).__name__} ({e})") from None
    torch.set_rng_state(ck.rng["torch"])
    random.setstate(ck.rng["python"])
    np.random.set_state(ck.rng["numpy"])
    if ck.rng["cuda"] and torch.cuda.is_available() and len(ck.rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(ck.rng["cuda"])


def restore_checkpoint(ck: Checkpoint, *, model, optimizer, scheduler) -> None:
    """Put a read checkpoint's weights, optimizer, scheduler and RNG states in place."""
    load_trainable_state(model, ck.weights, ck.path / "model")
    try:
        optimizer.load_state_dict(ck.optimizer)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{ck.path / OPTIMIZER_JSON}: does not fit the {type(optimizer).__name__} ({e})") from None
    _restore_scheduler_and_rng(ck, scheduler)
