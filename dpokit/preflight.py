"""Checks of a run's surroundings made before any model is loaded: the output directory can be
written, and each model name resolves to a model on this machine. Without them an unwritable
`output_dir` or a mistyped `model=` would surface only after minutes of loading or sampling,
and as a traceback."""

from __future__ import annotations

import os
from pathlib import Path

from dpokit.config import ConfigError


def check_output_dir(path: str, key: str = "output_dir") -> None:
    """`path` is a directory that exists and is writable, or can be created (its nearest existing
    ancestor is a writable directory). Creates nothing."""
    target = Path(path).expanduser()
    probe = target
    try:
        while not probe.exists():  # False too where a parent is a file (ENOTDIR)
            probe = probe.parent
    except OSError as e:  # e.g. a parent without search permission
        raise ConfigError(f"{key} {path}: cannot be checked ({e.strerror or e})") from None
    if not probe.is_dir():
        where = "is a file" if probe == target else f"lies under {probe}, which is a file"
        raise ConfigError(f"{key} {path} {where}, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "is" if probe == target else f"would be created in {probe}, which is"
        raise ConfigError(f"{key} {path} {what} not writable")


def check_model(name: str, key: str = "model") -> None:
    """`name` resolves (models.resolve_model_path: local dir, bundled alias, locally cached hub
    id; never the network) to a directory holding a model or a LoRA adapter."""
    from dpokit.models import ModelNotFoundError, resolve_model_path

    try:
        path = resolve_model_path(name)
    except ModelNotFoundError as e:  # its message starts "model 'NAME' ..."
        raise ConfigError(str(e) if key == "model" else f"{key}: {e}") from None
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise ConfigError(f"{key}: {name} is a directory without config.json or adapter_config.json, not a model")


MODEL_KEYS = ("model", "ref_model", "reward_model", "value_model")


def check_run(cfg) -> None:
    """Everything a run (TrainConfig, a study's config, PPO / RLOO) needs from its surroundings
    up front: a writable output_dir and every model key it has that is set."""
    check_output_dir(cfg.output_dir)
    for key in MODEL_KEYS:
        if getattr(cfg, key, None):
            check_model(getattr(cfg, key), key)
