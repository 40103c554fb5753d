"""The `dpokit` command. Thin: parse, build the config, call the library."""

from __future__ import annotations

import argparse
import sys

from dpokit.config import ConfigError, TrainConfig, config_source, load_config
from dpokit.data.audit import DEFAULT_MAX_EXAMPLES
from dpokit.data.records import DataError
from dpokit.losses import LOSSES
from dpokit.train.checkpoint import CheckpointError
from dpokit.train.loop import TrainingDiverged


def _train_command(args, objective: str) -> int:
    from dpokit.preflight import check_run

    path = config_source(args.config) if args.config is not None else None
    cfg = load_config(TrainConfig, path, args.overrides, base={"objective": objective})
    if cfg.objective != objective:
        raise ConfigError(f"`dpokit {objective}` with a config whose objective is {cfg.objective!r}")
    check_run(cfg)
    from dpokit.train.loop import train

    from dpokit import accel

    result = train(cfg, resume=args.resume, force=args.force)
    ev = result.summary.get("eval") or {}
    if ev and accel.current().is_main:
        shown = {k: round(v, 4) for k, v in ev.items() if isinstance(v, float)}
        print(f"held-out: {shown}")
    return 0


def _online_command(args) -> int:
    """`dpokit ppo` / `dpokit rloo`: online RL from a reward model (or the ground truth). A
    reward that raises or is NaN/inf mid-run is one line and exit 1, like a divergence: the run
    started and failed (exit 2 is for input refused before training; dpokit.rlhf.online)."""
    from dpokit.preflight import check_run
    from dpokit.rlhf.online import RewardError

    if args.command == "ppo":
        from dpokit.rlhf.ppo_config import PPOConfig as config_type
    else:
        from dpokit.rlhf.rloo_config import RLOOConfig as config_type
    path = config_source(args.config) if args.config is not None else None
    cfg = load_config(config_type, path, args.overrides)
    check_run(cfg)
    if args.command == "ppo":
        from dpokit.rlhf.ppo_run import run_ppo as run
    else:
        from dpokit.rlhf.rloo import run_rloo as run
    try:
        run(cfg, resume=args.resume, force=args.force)
    except RewardError as e:
        print(f"dpokit: reward error: {e}", file=sys.stderr)
        return 1
    return 0


def _score_command(args) -> int:
    from dpokit.score import ScoreSettings, score_file

    settings = ScoreSettings(
        beta=args.beta, max_length=args.max_length, max_prompt_length=args.max_prompt_length,
        batch_size=args.batch_size, on_malformed=args.on_malformed,
    )
    score_file(args.model, args.ref, args.data, args.out, settings)
    return 0


def _audit_command(args) -> int:
    """Audit a preference file; exit 2 when it cannot be read (an audit's findings are not failures)."""
    from dpokit.data.audit import audit_file, format_report, write_report

    try:  # a DataError (file:line:field) is reported by main()
        report = audit_file(args.path, split=args.split, max_examples=args.max_examples)
    except (OSError, UnicodeDecodeError) as e:
        print(f"dpokit: cannot read {args.path}: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.json:
        try:
            write_report(report, args.json)
        except OSError as e:
            print(f"dpokit: cannot write {args.json}: {e}", file=sys.stderr)
            return 2
    return 0


def _count(text: str) -> int:
    """argparse type: a whole number >= 0."""
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {n}")
    return n


def _run_command(args) -> int:
    from dpokit.tasks import registry

    return registry.run_task(args.task, args.config, args.overrides, quick=args.quick, resume=getattr(args, "resume", False))


def _study_command(args) -> int:
    from dpokit.studies import run_study

    config = args.config
    if config is not None and "=" in config:  # argparse took the first override for the positional
        args.overrides, config = [config] + list(args.overrides), None
    if config is not None and args.config_opt is not None:
        raise ConfigError(f"two configs given: {config} and --config {args.config_opt}")
    run_study(args.name, config or args.config_opt, args.overrides, quick=args.quick, resume=args.resume)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpokit", description="Direct preference optimization, with the evidence.")
    sub = parser.add_subparsers(dest="command", required=True)
    trainers = (
        ("sft", "supervised fine-tuning on chosen completions (makes a reference)"),
        ("dpo", f"pairwise preference training ({', '.join(LOSSES)})"),
        ("rm", "Bradley–Terry reward model on the same pair files (scalar head, loads as AutoModelForSequenceClassification)"),
        ("kto", 'KTO on unpaired completions: {"prompt", "completion", "label": true|false} records'),
        ("rrhf", 'RRHF on ranked responses: {"prompt", "responses": [...], "scores": [...]} records (no reference)'),
    )
    for name, help_text in trainers:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", help=f"YAML file, or a packaged recipe: {name}")
        p.add_argument("--resume", nargs="?", const="latest", default=None, help="resume from the latest checkpoint in output_dir, or from PATH")
        p.add_argument("--force", action="store_true", help="resume despite changed data/config, or replace a previous run in output_dir")
        p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. beta=0.1 lora.r=8")
    for name, help_text in (("ppo", "PPO with a KL penalty to the reference (the RLHF baseline)"),
                            ("rloo", "RLOO: k samples per prompt, leave-one-out baseline, no value model")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", help=f"YAML file, or a packaged recipe: {name}_sentiment")
        p.add_argument("--resume", nargs="?", const="latest", default=None, help="resume from the latest checkpoint in output_dir, or from PATH")
        p.add_argument("--force", action="store_true", help="resume despite changed settings, or replace a previous run in output_dir")
        p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. kl_coef=0.1 reward_model=runs/rm/final")
    p = sub.add_parser("score", help="per-pair log-probs and implicit reward margins")
    p.add_argument("--model", required=True)
    p.add_argument("--ref", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--max-prompt-length", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--on-malformed", choices=("raise", "skip"), default="raise")
    p = sub.add_parser("audit", help="preference-data audit: duplicates, contradictions, cycles, length bias")
    p.add_argument("path", help="JSONL / JSON / Parquet / datasets dir")
    p.add_argument("--json", metavar="OUT", help="also write the audit as JSON")
    p.add_argument("--max-examples", type=_count, default=DEFAULT_MAX_EXAMPLES, metavar="N", help=f"examples shown per finding (default {DEFAULT_MAX_EXAMPLES})")
    p.add_argument("--split", help="split of a datasets dir (default train)")
    p = sub.add_parser("inspect", help="where a policy differs from its reference: weights, residual stream, logit lens, patching")
    p.add_argument("policy", help="trained model dir (or LoRA adapter dir)")
    p.add_argument("--ref", help="reference model dir (default for a LoRA adapter: its base model)")
    p.add_argument("--prompts", required=True, help='prompt or pair file ({"prompt": ...}; "completion"/"chosen" enable patching)')
    p.add_argument("--json", metavar="OUT", help="also write the report as JSON")
    p.add_argument("--max-prompts", type=_count, default=64, metavar="N", help="use the first N prompts (default 64; 0 = all)")
    p.add_argument("--max-length", type=_count, default=256, metavar="N", help="tokens per prompt + completion (default 256)")
    p = sub.add_parser("run", help="run a case study end to end (e.g. sentiment)")
    p.add_argument("task")
    p.add_argument("--config", help="YAML file or packaged recipe name (default: TASK, --quick: TASK_quick)")
    p.add_argument("--quick", action="store_true", help="the small preset (minutes)")
    p.add_argument("--resume", action="store_true",
                   help="frontier: reuse the runs a previous sweep in output_dir finished with the same settings; redo the rest")
    p.add_argument("overrides", nargs="*")
    p = sub.add_parser("study", help="a study of where DPO breaks (noise, beta-noise, reference, calibration, ...)")
    p.add_argument("name")
    p.add_argument("config", nargs="?", help="YAML file or packaged recipe (default: study_NAME, --quick: study_NAME_quick)")
    p.add_argument("--config", dest="config_opt", metavar="CONFIG", help="the same as the positional CONFIG")
    p.add_argument("--quick", action="store_true", help="the toy-size preset (about a minute)")
    p.add_argument("--resume", action="store_true", help="reuse finished runs (of any study) whose settings and inputs match")
    p.add_argument("overrides", nargs="*")
    p = sub.add_parser("demo", help="= dpokit run sentiment with the default recipe")
    p.add_argument("--quick", action="store_true")
    p.add_argument("overrides", nargs="*")
    return parser


DATA_PARALLEL_COMMANDS = ("sft", "dpo", "rm", "kto", "rrhf", "audit")


def _refuse_data_parallel(command: str) -> None:
    """Under a multi-process launch only the training loop splits its work across ranks; any
    other command would run N identical copies writing the same files."""
    from dpokit import accel

    n = accel.launched_processes()
    if n > 1 and command not in DATA_PARALLEL_COMMANDS:
        raise ConfigError(f"`dpokit {command}` runs in one process; it was launched as {n} processes "
                          f"(data parallel: {', '.join(c for c in DATA_PARALLEL_COMMANDS if c != 'audit')})")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come before or after flags (`run sentiment --quick beta=0.1`).
    args, extra = parser.parse_known_args(argv)
    bad = [a for a in extra if "=" not in a or a.startswith("-")]
    if bad or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    try:
        _refuse_data_parallel(args.command)
        if args.command in ("sft", "dpo", "rm", "kto", "rrhf"):
            return _train_command(args, args.command)
        if args.command in ("ppo", "rloo"):
            return _online_command(args)
        if args.command == "score":
            return _score_command(args)
        if args.command == "audit":
            return _audit_command(args)
        if args.command == "inspect":
            from dpokit.shift.command import run_inspect

            run_inspect(args.policy, args.ref, args.prompts, json_out=args.json, max_prompts=args.max_prompts,
                        max_length=args.max_length)
            return 0
        if args.command == "study":
            return _study_command(args)
        if args.command == "demo":
            args.task, args.config = "sentiment", None
        return _run_command(args)
    except ConfigError as e:
        print(f"dpokit: config error: {e}", file=sys.stderr)
        return 2
    except DataError as e:  # file:line:field says where; a traceback would only bury it
        print(f"dpokit: data error: {e}", file=sys.stderr)
        return 2
    except CheckpointError as e:  # names the file
        print(f"dpokit: checkpoint error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:  # not bad input: the run itself failed
        print(f"dpokit: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
