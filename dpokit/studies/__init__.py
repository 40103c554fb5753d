"""`dpokit study NAME`: studies of where DPO's equivalences break, on the sentiment task's
ground truth. The shared core is `dpokit.studies.common` (its docstring is the API).

A study registers itself with one line in STUDIES: its name → the module that holds
`CONFIG` (a StudyConfig subclass), `TITLE` and `run(cfg, log, resume)`. Modules are imported
only when their study runs (the command line stays fast)."""

from __future__ import annotations

import importlib

from dpokit.config import ConfigError, config_source, load_config, recipe

STUDIES: dict[str, str] = {
    "noise": "dpokit.studies.noise",
    "beta-noise": "dpokit.studies.beta_noise",
    "reference": "dpokit.studies.reference",
    "calibration": "dpokit.studies.calibration",
    "disagreement": "dpokit.studies.disagreement",
    "cycles": "dpokit.studies.cycles",
    "lowrank": "dpokit.studies.lowrank",
}


def recipe_name(name: str, quick: bool) -> str:
    """The packaged recipe of study `name`: study_<name>[_quick], `-` as `_`."""
    return f"study_{name.replace('-', '_')}" + ("_quick" if quick else "")


def study_module(name: str):
    if name not in STUDIES:
        raise ConfigError(f"unknown study {name!r}; valid: {', '.join(STUDIES)}")
    return importlib.import_module(STUDIES[name])


def run_study(name: str, config: str | None, overrides: list[str], *, quick: bool = False, resume: bool = False,
              log=print) -> dict:
    """Load the study's config (a file, a packaged recipe, or its own recipe), check it before
    anything loads, run it; returns what its `run` returns."""
    from dpokit.preflight import check_output_dir, check_run

    module = study_module(name)
    if config is not None and quick:
        raise ConfigError("--quick picks the study's quick recipe; it cannot be combined with a config file")
    path = config_source(config) if config is not None else recipe(recipe_name(name, quick))
    cfg = load_config(module.CONFIG, path, overrides)
    check_run(cfg)
    check_output_dir(cfg.runs_dir, "runs_dir")
    return module.run(cfg, log=log, resume=resume)
