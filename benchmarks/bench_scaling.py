"""`--scaling`: dpokit (default settings) pairs/s and peak memory as the completion length grows
and as the batch grows, as Markdown tables, each point in a process of its own.

Length sweep: exact-length pairs (random token ids; content does not change the cost), prompt
60 tokens, chosen = rejected = L tokens, batch `--scale-length-batch`.
Batch sweep: the benchmark's chat pairs (same as the comparison), batch B.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

PROMPT_TOKENS = 60


def _slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log y on log x (the exponent k of y ∝ x^k)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    den = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / den if den else None


def _row_values(r: dict) -> dict:
    per_pair = r["timed_tokens"] / r["timed_pairs"]  # of the pairs actually timed
    return {
        "tokens_per_pair": per_pair,
        "pairs_per_s": r["pairs_per_s"],
        "tokens_per_s": r["tokens_per_s"],
        "seconds_per_step": r["seconds_per_step"],
        "ms_per_token": 1000.0 / r["tokens_per_s"],
        "peak_rss_mb": r["peak_rss_mb"],
    }


def _table(title: str, key: str, points: list[tuple[int, dict]]) -> list[str]:
    lines = [
        f"**{title}**", "",
        f"| {key} | tokens/pair | s/step | pairs/s | tokens/s | ms per token | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for x, r in points:
        if "error" in r:
            lines.append(f"| {x} | failed | | | | | |")
            continue
        v = r["values"]
        lines.append(
            f"| {x} | {v['tokens_per_pair']:.0f} | {v['seconds_per_step']:.2f} | {v['pairs_per_s']:.3f} "
            f"| {v['tokens_per_s']:.1f} | {v['ms_per_token']:.2f} | {v['peak_rss_mb']:.0f} |"
        )
    return lines


def _growth(points: list[tuple[int, dict]], what: str) -> str:
    ok = [(x, r["values"]) for x, r in points if "values" in r]
    if len(ok) < 2:
        return ""
    xs = [v["tokens_per_pair"] if what == "length" else x for x, v in ok]
    t_step = [v["seconds_per_step"] for _, v in ok]
    rss = [v["peak_rss_mb"] for _, v in ok]
    k_time, k_rss = _slope(xs, t_step), _slope(xs, rss)
    x_name = "tokens per pair" if what == "length" else "batch"
    return (
        f"Fitted on log-log: time per step ∝ ({x_name})^{k_time:.2f}; peak RSS ∝ ({x_name})^{k_rss:.2f} "
        f"(RSS {rss[0]:.0f} → {rss[-1]:.0f} MB, +{(rss[-1] - rss[0]):.0f} MB over the sweep)."
    )


def _run(points_spec, run_worker, log_dir: Path) -> list[tuple[int, dict]]:
    out = []
    for x, spec in points_spec:
        print(f"  {spec['name']} ...", flush=True)
        r = run_worker(spec, log_dir)
        if "pairs_per_s" in r:
            r["values"] = _row_values(r)
            print(f"    {r['pairs_per_s']:.3f} pairs/s, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
        out.append((x, r))
    return out


def run_scaling(args, run_worker, base_spec) -> dict:
    per_run = args.warmup + args.steps
    b_len = args.scale_length_batch
    length_specs = [
        (L, base_spec(args, f"len-{L}", "dpokit", {}, {
            "batch": b_len, "synthetic": {"n": b_len * per_run, "prompt": PROMPT_TOKENS, "chosen": L, "rejected": L},
        }))
        for L in args.scale_lengths
    ]
    batch_specs = [
        (B, base_spec(args, f"batch-{B}", "dpokit", {}, {"batch": B, "pairs": max(args.pairs, B * per_run)}))
        for B in args.scale_batches
    ]
    with tempfile.TemporaryDirectory(prefix="dpokit-bench-logs-") as tmp:
        print("scaling: completion length", flush=True)
        lengths = _run(length_specs, run_worker, Path(tmp))
        print("scaling: batch", flush=True)
        batches = _run(batch_specs, run_worker, Path(tmp))
    text = [""]
    if lengths:
        text += [*_table(f"Completion length (prompt {PROMPT_TOKENS}, chosen = rejected = L, batch {b_len})", "L", lengths), "", _growth(lengths, "length"), ""]
    if batches:
        text += [*_table("Batch (benchmark chat pairs)", "batch", batches), "", _growth(batches, "batch")]
    print("\n".join(text))
    strip = lambda pts: [{"x": x, **(r.get("values") or {"error": r.get("error")})} for x, r in pts]  # noqa: E731
    return {"length_sweep": strip(lengths), "batch_sweep": strip(batches), "markdown": "\n".join(text),
            "settings": {"steps": args.steps, "warmup": args.warmup, "length_batch": b_len, "model": args.model}}
