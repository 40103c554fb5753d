"""`dpokit run TASK`: config loading, the --quick preset and sweeps (`beta=0.05,0.1,0.5`)."""

from __future__ import annotations

import json
from pathlib import Path

from dpokit.config import ConfigError, config_source, load_config, recipe

TASKS = ("sentiment", "frontier", "instructions")


def _default_config(task: str, quick: bool):
    """The packaged recipe of `task` (dpokit/configs); ConfigError if the install lacks it:
    running on bare dataclass defaults instead would be a different study."""
    return recipe(f"{task}_quick" if quick else task)


def split_sweep(overrides: list[str]) -> tuple[list[str], str | None, list[str]]:
    """Separate one `key=a,b,c` sweep from plain overrides (lists like
    lora.target_modules keep their commas)."""
    plain, sweep_key, values = [], None, []
    for item in overrides:
        key, _, raw = item.partition("=")
        if "," in raw and not key.endswith("target_modules") and not raw.lstrip().startswith("["):  # [a, b] is a list
            if sweep_key is not None:
                raise ConfigError("only one swept key at a time")
            sweep_key, values = key, [v.strip() for v in raw.split(",") if v.strip()]
        else:
            plain.append(item)
    return plain, sweep_key, values


def run_task(task: str, config: str | None, overrides: list[str], *, quick: bool = False, resume: bool = False,
             log=print) -> int:
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
    if resume and task not in ("frontier", "instructions"):
        raise ConfigError(f"--resume: only `run frontier` and `run instructions` reuse finished runs; `run {task}` redoes its stages")
    from dpokit.preflight import check_run
    from dpokit.tasks.sentiment_config import SentimentConfig

    path = config_source(config) if config else _default_config(task, quick)
    if task == "frontier":  # its method lists (dpo.betas=0.05,0.1) are values, not a sweep
        return _run_frontier(path, overrides, log, resume)
    if task == "instructions":  # pairs.files=a.jsonl,b.jsonl is a list, not a sweep
        return _run_instructions(path, overrides, log, resume)
    plain, sweep_key, values = split_sweep(overrides)
    base = load_config(SentimentConfig, path, plain)
    runs = [(None, base)]
    if sweep_key is not None:
        runs = []
        for value in values:
            out = f"{base.output_dir}/{sweep_key}-{value}"
            runs.append((value, load_config(SentimentConfig, path, plain + [f"{sweep_key}={value}", f"output_dir={out}"])))
    for _, cfg in runs:  # every point is checked before the first one starts: a sweep takes hours
        check_run(cfg)
    from dpokit.tasks.sentiment import run_sentiment

    if sweep_key is None:
        run_sentiment(base, log=log)
        return 0
    points = []
    for value, cfg in runs:
        log(f"=== sweep {sweep_key}={value} → {cfg.output_dir}")
        summary = run_sentiment(cfg, log=log)
        points.append({"label": f"{sweep_key}={value}", "kl": summary.get("kl"),
                       "reward_mean": summary["policy"]["reward_mean"], "reward_ci95": summary["policy"]["reward_ci95"],
                       "win_rate": summary["win_rate"], "run_dir": cfg.output_dir})
    write_sweep(Path(base.output_dir), points, log)
    return 0


def _run_frontier(path, overrides: list[str], log, resume: bool) -> int:
    from dpokit.preflight import check_run
    from dpokit.tasks.frontier_config import FrontierConfig

    cfg = load_config(FrontierConfig, path, overrides)
    check_run(cfg)
    from dpokit.tasks.frontier import run_frontier

    run_frontier(cfg, log=log, resume=resume)
    return 0


def _run_instructions(path, overrides: list[str], log, resume: bool) -> int:
    from dpokit.preflight import check_run
    from dpokit.tasks.instructions_config import InstructionsConfig

    cfg = load_config(InstructionsConfig, path, overrides)
    check_run(cfg)
    from dpokit.tasks.instructions import run_instructions

    run_instructions(cfg, log=log, resume=resume)
    return 0


def write_sweep(out_dir: Path, points: list[dict], log=print) -> None:
    from dpokit.report import plot_reward_vs_kl

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sweep_summary.json").write_text(json.dumps(points, indent=2))
    plot = plot_reward_vs_kl(points, out_dir / "sweep_reward_vs_kl.png")
    for p in points:
        log(f"{p['label']}: reward {p['reward_mean']:.3f}, KL {p['kl']:.2f}, win rate {p['win_rate']:.0%}")
    log(f"sweep plot: {plot}")
