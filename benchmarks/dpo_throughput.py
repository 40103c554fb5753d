"""DPO training throughput: TRL's DPOTrainer vs dpokit, same model, data, batch, precision, steps.

    python benchmarks/dpo_throughput.py                      # full comparison (several minutes)
    python benchmarks/dpo_throughput.py --quick              # tiny model, seconds (smoke test)
    python benchmarks/dpo_throughput.py --scaling            # dpokit vs completion length / batch
    python benchmarks/dpo_throughput.py --json out.json --steps 4 --batch 4 --pairs 64

Each configuration runs in a fresh process of its own (its peak RSS is its own), one after
another, engines alternating (TRL, dpokit, TRL, dpokit; `--rounds` repeats the cycle). The
first `--warmup` optimizer steps of each are excluded from timing. Reference log-probs that an
engine precomputes once (dpokit's default `cached` reference, TRL's
`precompute_ref_log_probs`) are timed apart and also shown amortised over one epoch.

Useful FLOPs: 6·N per trained token with the prompt counted once per pair and N = all
parameters (134.5M for SmolLM2-135M: the tied embedding is also the output head); compared
with an fp32 2048×2048 matmul loop measured in the same invocation. The JSON holds the
non-embedding variant too.

TRL is optional (`pip install -e .[bench]`); without it only the dpokit rows run.
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

from benchmarks.bench_report import format_comparison, enrich  # noqa: E402

# name -> (engine, options). TRL options are DPOConfig fields, dpokit's TrainConfig fields.
CONFIGS = {
    "trl-defaults": ("trl", {}),
    "dpokit-defaults": ("dpokit", {}),
    "trl-best": ("trl", {"precompute_ref_log_probs": True, "gradient_checkpointing": False}),
    # No fp32 setting measured faster than the defaults (row budgets 256/384/512 and head
    # chunks are within noise since rows are balanced), so "best" is the defaults run again:
    # the two rows also show the run-to-run spread.
    "dpokit-best": ("dpokit", {}),
}
LORA = {"r": 16, "alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
# Optional extras (`--extras`): bf16 autocast, torch.compile, low-memory settings, LoRA.
EXTRAS = {
    "dpokit-bf16": ("dpokit", {"autocast_bf16": True}, {}),
    # Memory: each parameter updated in backward (no resident gradients; no global clipping).
    "dpokit-inbwd": ("dpokit", {"optimizer_in_backward": True, "max_grad_norm": 0.0}, {}),
    # ... and activations recomputed per layer, freed memory given back to the OS, and the
    # output head in chunks of 256 tokens: a checkpointed chunk's fp32 logits, their
    # log-softmax and its gradient live together in backward (3 × chunk × 49,152 × 4 bytes:
    # 1.2 GB at the default 2,048 tokens, 0.15 GB at 256). The smallest footprint found.
    "dpokit-lowmem": (
        "dpokit",
        {"optimizer_in_backward": True, "max_grad_norm": 0.0, "gradient_checkpointing": True, "tune_malloc": False,
         "chunk_size": 256},
        {},
    ),
    "dpokit-compile": ("dpokit", {}, {"compile": True}),
    # LoRA, the same peft settings for both engines (r=16, alpha 32, attention and MLP
    # projections); TRL's reference is then the adapter switched off, as dpokit's cached one is
    # computed from the base model once. Compared with each other: ratios "× TRL-LoRA".
    # Both AdamW moments in 8 bits (torchao): the loss curve beside dpokit-defaults' (same
    # batches in the same order) measures what the quantised state costs.
    "dpokit-8bit": ("dpokit", {"optimizer": "adamw8bit"}, {}),
    # The low-memory settings with 8-bit moments: 0.27 GB of optimizer state instead of 1.08 GB.
    "dpokit-lowmem-8bit": (
        "dpokit",
        {"optimizer": "adamw8bit", "optimizer_in_backward": True, "max_grad_norm": 0.0, "gradient_checkpointing": True,
         "tune_malloc": False, "chunk_size": 256},
        {},
    ),
    "trl-lora": ("trl", {}, {"lora": LORA}),
    "dpokit-lora": ("dpokit", {}, {"lora": LORA}),
    # LoRA with the head in 256-token chunks, the layers recomputed in backward and freed memory
    # returned to the OS: with the base frozen, activations are most of what a step holds
    # (measured per phase: benchmarks/README.md, "Memory").
    "dpokit-lora-lowmem": ("dpokit", {"chunk_size": 256, "tune_malloc": False, "gradient_checkpointing": True},
                           {"lora": LORA}),
}


# glibc malloc kept from returning freed memory to the OS between steps (`--malloc-env`): the
# default thresholds make every step mmap, page-fault and zero its activations afresh.
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),  # the largest glibc allows: blocks below it come from the heap
    "MALLOC_TRIM_THRESHOLD_": str(16 << 30),  # never trim the heap top back to the OS
    "MALLOC_TOP_PAD_": str(1 << 30),
}


def trl_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("trl") is not None


def run_worker(spec: dict, log_dir: Path) -> dict:
    """Run one configuration in a fresh Python process; return its result dict (or an error)."""
    spec_path = log_dir / f"{spec['name']}.spec.json"
    result_path = log_dir / f"{spec['name']}.result.json"
    log_path = log_dir / f"{spec['name']}.log"
    spec_path.write_text(json.dumps(spec))
    result_path.unlink(missing_ok=True)
    code = f"from benchmarks.bench_workers import main; main({str(spec_path)!r}, {str(result_path)!r})"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(spec.pop("env", None) or {})
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not result_path.exists():
        tail = log_path.read_text()[-3000:]
        print(f"  {spec['name']}: FAILED (exit {proc.returncode}); log tail:\n{tail}", file=sys.stderr)
        return {"name": spec["name"], "engine": spec["engine"], "error": tail, "wall_s": wall}
    result = json.loads(result_path.read_text())
    result["wall_s"] = wall
    return result


def matmul_gflops(size: int = 2048, seconds: float = 3.0, threads: int | None = None) -> float:
    """fp32 size×size matmul throughput of this machine, GFLOP/s (best of several timed runs)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(2):
        a @ b
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(3):
            a @ b
        best = max(best, 3 * 2 * size**3 / (time.perf_counter() - start) / 1e9)
    return best


def base_spec(args, name: str, engine: str, options: dict, extra: dict | None = None) -> dict:
    return {
        "name": name, "engine": engine, "options": options, "model": args.model, "batch": args.batch,
        "steps": args.steps, "warmup": args.warmup, "pairs": args.pairs, "lengths": list(args.lengths),
        "seed": args.seed, "lr": 5e-6, "threads": args.threads, "env": MALLOC_ENV if args.malloc_env else {},
        **(extra or {}),
    }


def selected_configs(args) -> list[tuple[str, str, dict, dict]]:
    names = args.configs if args.configs is not None else list(CONFIGS)
    out = []
    for name in names:
        engine, options = CONFIGS[name]
        if name == "dpokit-best" and args.best_options is not None:
            options = args.best_options
        if engine == "trl" and not args.with_trl:
            continue
        out.append((name, engine, options, {}))
    for name in args.extras:
        engine, options, extra = EXTRAS[name]
        out.append((name, engine, options, extra))
    return out


def merge_rounds(results: list[dict]) -> dict:
    """One entry per configuration: mean throughput over rounds, max peak RSS."""
    merged: dict[str, dict] = {}
    for r in results:
        if r["name"] not in merged:
            merged[r["name"]] = dict(r, rounds=[])
        merged[r["name"]]["rounds"].append({k: r.get(k) for k in ("pairs_per_s", "tokens_per_s", "peak_rss_mb", "error")})
    for entry in merged.values():
        ok = [x for x in entry["rounds"] if not x.get("error")]
        if ok:
            for key in ("pairs_per_s", "tokens_per_s"):
                entry[key] = sum(x[key] for x in ok) / len(ok)
            entry["peak_rss_mb"] = max(x["peak_rss_mb"] for x in ok)
    return merged


def compare(args) -> dict:
    configs = selected_configs(args)
    print(f"matmul peak: measuring fp32 {args.matmul_size}x{args.matmul_size} ...", flush=True)
    peak_before = matmul_gflops(args.matmul_size, args.matmul_seconds, args.threads)
    results = []
    with tempfile.TemporaryDirectory(prefix="dpokit-bench-logs-") as tmp:
        for r in range(args.rounds):
            for name, engine, options, extra in configs:
                print(f"[round {r + 1}/{args.rounds}] {name} ...", flush=True)
                result = run_worker(base_spec(args, name, engine, options, extra), Path(tmp))
                results.append(result)
                if "pairs_per_s" in result:
                    print(f"  {result['pairs_per_s']:.3f} pairs/s, peak RSS {result['peak_rss_mb']:.0f} MB, wall {result['wall_s']:.0f} s", flush=True)
    peak_after = matmul_gflops(args.matmul_size, args.matmul_seconds, args.threads)
    if args.bf16_check:
        with tempfile.TemporaryDirectory(prefix="dpokit-bench-logs-") as tmp:
            print("bf16 autocast: log-prob check ...", flush=True)
            check = run_worker(base_spec(args, "logprob-check", "logprobs", {}), Path(tmp))
    else:
        check = None
    report = enrich(merge_rounds(results), max(peak_before, peak_after), args.pairs)
    report["matmul"] = {"size": args.matmul_size, "gflops_before": peak_before, "gflops_after": peak_after, "gflops_peak": max(peak_before, peak_after)}
    report["bf16_logprobs"] = check
    report["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    report["settings"] = {k: getattr(args, k) for k in ("model", "batch", "steps", "warmup", "pairs", "lengths", "seed", "rounds", "threads", "malloc_env")}
    print(format_comparison(report))
    return report


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny model, few steps: a smoke run in seconds")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--steps", type=int, help="timed optimizer steps per configuration (default 4; --quick 2)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before them (the 2nd step is still slow)")
    ap.add_argument("--batch", type=int, default=4, help="pairs per optimizer step (no accumulation)")
    ap.add_argument("--pairs", type=int, help="pairs in the data set, one epoch for amortising (default 64; --quick 16)")
    ap.add_argument("--lengths", type=float, nargs=3, default=(60, 60, 43), metavar=("PROMPT", "CHOSEN", "REJECTED"),
                    help="target mean token lengths of the data set (templated prompt, chosen, rejected)")
    ap.add_argument("--model", help="model alias/path, or 'tiny' (default smollm2-135m-instruct; --quick tiny)")
    ap.add_argument("--configs", nargs="*", choices=list(CONFIGS), help="subset of the four configurations")
    ap.add_argument("--extras", nargs="*", default=[], choices=list(EXTRAS), help="also run these dpokit variants")
    ap.add_argument("--best-options", nargs="*", metavar="KEY=VALUE", help="replace dpokit-best's TrainConfig options")
    ap.add_argument("--no-trl", dest="with_trl", action="store_false", help="dpokit rows only")
    ap.add_argument("--bf16-check", action="store_true", help="measure bf16 autocast's effect on per-pair log-probs")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the alternating cycle (throughput averaged)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--malloc-env", action="store_true", help="run every configuration with glibc malloc tuned (MALLOC_ENV)")
    ap.add_argument("--matmul-size", type=int, default=2048)
    ap.add_argument("--matmul-seconds", type=float, default=3.0)
    ap.add_argument("--scaling", action="store_true", help="dpokit pairs/s and memory vs completion length and batch")
    ap.add_argument("--scale-lengths", type=int, nargs="*", default=None, help="completion lengths, chosen = rejected (default 64 128 256 512 1024)")
    ap.add_argument("--scale-length-batch", type=int, default=2, help="batch of the length sweep")
    ap.add_argument("--scale-batches", type=int, nargs="*", default=None, help="batches of the batch sweep, benchmark data (default 1 2 4 8 16)")
    args = ap.parse_args(argv)
    small = args.quick
    args.model = args.model or ("tiny" if small else "smollm2-135m-instruct")
    args.steps = args.steps or (2 if small else 4)
    args.pairs = args.pairs or (16 if small else 64)
    if small:
        args.matmul_size, args.matmul_seconds = 512, 0.3
    # An empty list (`--scale-batches` with no values) skips that sweep.
    if args.scale_lengths is None:
        args.scale_lengths = [16, 32] if small else [64, 128, 256, 512, 1024]
    if args.scale_batches is None:
        args.scale_batches = [1, 2] if small else [1, 2, 4, 8, 16]
    if args.best_options is not None:
        import yaml

        args.best_options = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.best_options)}
    if args.with_trl and not trl_available():
        print("trl is not installed: TRL rows skipped (pip install -e .[bench])", file=sys.stderr)
        args.with_trl = False
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.scaling:
        from benchmarks.bench_scaling import run_scaling

        report = run_scaling(args, run_worker, base_spec)
    else:
        report = compare(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
