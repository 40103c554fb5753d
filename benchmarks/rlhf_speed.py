"""Online-RL speed: dpokit's sampler and RLOO step vs TRL 1.16, same model, prompts, batch, length.

    python benchmarks/rlhf_speed.py --json benchmarks/results/rlhf_speed.json   # SmolLM2-135M, fp32, CPU
    python benchmarks/rlhf_speed.py --quick                                      # tiny model: smoke run

1. Rollout tokens/s: `dpokit.generate.sample_completions` vs TRL's RLOOTrainer generation
   (`_generate`: transformers `model.generate` with TRL's GenerationConfig), the same prompts and
   seed per call, at each `--rollout-shapes` PROMPTSxGENERATIONSxNEW_TOKENS. Useful FLOPs =
   2·N per token, the prompt once per sequence (prefill) plus every generated token (to its EOS),
   N = all parameters; as a share of the fp32 matmul peak measured in the same run.
2. One training step: dpokit's `RLOOTrainer.round` vs TRL's `RLOOTrainer` (one optimizer step per
   generation), reward = dpokit's sentiment reward, `--prompts` × `--generations` samples of
   `--new-tokens` tokens, the same lr, β = 0.05 (both defaults), fp32, no eval or saving; and
   dpokit's `PPOTrainer.round` (same rollout size, value model = a fresh reward model on the
   policy's backbone; TRL 1.16 has no PPO trainer). Seconds per step after `--warmup` steps,
   peak RSS of the configuration's own process.

Each configuration runs in a fresh process, engines alternating (TRL, dpokit, ...). TRL is
optional (`pip install -e .[bench]`); without it only the dpokit rows run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks` and `dpokit` importable
    sys.path.insert(0, str(ROOT))

from benchmarks.dpo_throughput import matmul_gflops, trl_available
from benchmarks.rlhf_report import enrich, format_report

# Step configurations in run order (engines alternate): name -> (engine, worker, spec extras).
STEP_CONFIGS = {
    "trl-rloo": ("trl", "trl-rloo", {"options": {}}),  # TRL's defaults (gradient checkpointing on), fp32
    "dpokit-rloo": ("dpokit", "dpokit-online", {"method": "rloo"}),
    "trl-rloo-nogc": ("trl", "trl-rloo", {"options": {"gradient_checkpointing": False}}),
    "dpokit-ppo": ("dpokit", "dpokit-online", {"method": "ppo"}),
}
ROLLOUT_ENGINES = (("trl", "trl-generate"), ("dpokit", "dpokit-sampler"))


def run_worker(spec: dict, log_dir: Path) -> dict:
    """Run one configuration in a fresh Python process; its result dict (or an error tail)."""
    spec_path, result_path = log_dir / f"{spec['name']}.spec.json", log_dir / f"{spec['name']}.result.json"
    log_path = log_dir / f"{spec['name']}.log"
    spec_path.write_text(json.dumps(spec))
    result_path.unlink(missing_ok=True)
    code = f"from benchmarks.rlhf_workers import main; main({str(spec_path)!r}, {str(result_path)!r})"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not result_path.exists():
        tail = log_path.read_text()[-3000:]
        print(f"  {spec['name']}: FAILED (exit {proc.returncode}); log tail:\n{tail}", file=sys.stderr)
        return {"name": spec["name"], "engine": spec["engine"], "error": tail, "wall_s": wall}
    result = json.loads(result_path.read_text())
    result["wall_s"] = wall
    return result


def _spec(args, name: str, engine: str, runner: str, **extra) -> dict:
    return {"name": name, "engine": engine, "runner": runner, "model": args.model, "seed": args.seed,
            "threads": args.threads, "lr": args.lr, "warmup": args.warmup, **extra}


def rollout_specs(args) -> list[dict]:
    specs = []
    for shape in args.rollout_shapes:
        p, g, t = shape
        for engine, runner in ROLLOUT_ENGINES:
            if engine == "trl" and not args.with_trl:
                continue
            specs.append(_spec(args, f"{runner}@{p}x{g}x{t}", engine, runner, prompts=p, generations=g, new_tokens=t,
                               calls=args.calls, warmup=args.call_warmup))
    return specs


def step_specs(args) -> list[dict]:
    specs = []
    for name in args.configs:
        engine, runner, extra = STEP_CONFIGS[name]
        if engine == "trl" and not args.with_trl:
            continue
        specs.append(_spec(args, name, engine, runner, prompts=args.prompts, generations=args.generations,
                           new_tokens=args.new_tokens, steps=args.steps, **extra))
    return specs


def _progress(result: dict) -> str:
    if "error" in result:
        return "failed"
    if "tokens_per_s" in result:
        return f"{result['tokens_per_s']:.1f} generated tokens/s, peak RSS {result['peak_rss_mb']:.0f} MB, wall {result['wall_s']:.0f} s"
    return f"{result['seconds_per_step']:.2f} s/step, peak RSS {result['peak_rss_mb']:.0f} MB, wall {result['wall_s']:.0f} s"


def run_all(specs: list[dict]) -> dict[str, dict]:
    out = {}
    with tempfile.TemporaryDirectory(prefix="dpokit-rlbench-logs-") as tmp:
        for spec in specs:
            print(f"{spec['name']} ...", flush=True)
            out[spec["name"]] = run_worker(spec, Path(tmp))
            print(f"  {_progress(out[spec['name']])}", flush=True)
    return out


def compare(args) -> dict:
    print(f"matmul peak: measuring fp32 {args.matmul_size}x{args.matmul_size} ...", flush=True)
    before = matmul_gflops(args.matmul_size, args.matmul_seconds, args.threads)
    rollout = run_all(rollout_specs(args)) if args.rollout_shapes else {}
    steps = run_all(step_specs(args))
    after = matmul_gflops(args.matmul_size, args.matmul_seconds, args.threads)
    report = enrich(rollout, steps, max(before, after))
    report["matmul"] = {"size": args.matmul_size, "gflops_before": before, "gflops_after": after, "gflops_peak": max(before, after)}
    report["trl_skipped"] = None if args.with_trl else args.trl_skip_reason
    report["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    report["settings"] = {k: getattr(args, k) for k in ("model", "prompts", "generations", "new_tokens", "steps", "warmup", "lr",
                                                         "rollout_shapes", "calls", "call_warmup", "seed", "threads", "configs")}
    print(format_report(report))
    return report


def _shape(text: str) -> tuple[int, int, int]:
    try:
        p, g, t = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not PROMPTSxGENERATIONSxNEW_TOKENS (e.g. 4x2x16)") from None
    if min(p, g, t) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every part must be ≥ 1")
    return p, g, t


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny model, 1 timed step: a smoke run")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--model", help="model alias/path, or 'tiny' (default smollm2-135m-instruct; --quick tiny)")
    ap.add_argument("--prompts", type=int, default=4, help="prompts per training step (default 4)")
    ap.add_argument("--generations", type=int, default=2, help="samples per prompt (default 2; RLOO needs ≥ 2)")
    ap.add_argument("--new-tokens", type=int, default=16, help="max new tokens per sample (default 16)")
    ap.add_argument("--steps", type=int, help="timed training steps per configuration (default 3; --quick 1)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed training steps before them (default 1)")
    ap.add_argument("--lr", type=float, default=1e-5, help="learning rate of every engine (dpokit RLOO's default)")
    ap.add_argument("--configs", nargs="*", choices=list(STEP_CONFIGS), default=list(STEP_CONFIGS), help="training-step configurations")
    ap.add_argument("--rollout-shapes", nargs="*", type=_shape, help="PxGxT sampling shapes (default 4x2x16 16x4x64; --quick 2x2x8; none = skip)")
    ap.add_argument("--calls", type=int, help="timed sampling calls per shape (default 3; --quick 2)")
    ap.add_argument("--call-warmup", type=int, default=1, help="untimed sampling calls before them")
    ap.add_argument("--no-trl", dest="with_trl", action="store_false", help="dpokit rows only")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--matmul-size", type=int, default=2048)
    ap.add_argument("--matmul-seconds", type=float, default=3.0)
    args = ap.parse_args(argv)
    args.model = args.model or ("tiny" if args.quick else "smollm2-135m-instruct")
    args.steps = args.steps or (1 if args.quick else 3)
    args.calls = args.calls or (2 if args.quick else 3)
    if args.rollout_shapes is None:
        args.rollout_shapes = [(2, 2, 8)] if args.quick else [(4, 2, 16), (16, 4, 64)]
    if args.quick:
        args.matmul_size, args.matmul_seconds = 512, 0.3
    if args.generations < 2 or min(args.prompts, args.new_tokens, args.steps, args.calls) < 1 or args.warmup < 0:
        ap.error("--generations must be ≥ 2 (RLOO's baseline); --prompts, --new-tokens, --steps, --calls ≥ 1; --warmup ≥ 0")
    args.trl_skip_reason = "--no-trl" if not args.with_trl else None
    if args.with_trl and not trl_available():
        args.trl_skip_reason = "trl is not installed (pip install -e .[bench])"
        print(f"{args.trl_skip_reason}: TRL rows skipped", file=sys.stderr)
        args.with_trl = False
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    report = compare(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
