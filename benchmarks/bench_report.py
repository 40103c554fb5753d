"""Ratios, FLOP accounting and the printed tables of the throughput benchmark."""

from __future__ import annotations

import math

BASELINES = ("trl-defaults", "trl-best")


def _ratio(value, base) -> float | None:
    if value is None or base is None or not base:
        return None
    return value / base


def useful_gflops(entry: dict, params: int) -> float:
    """6·N per trained token (forward 2N + backward 4N), prompt counted once per pair."""
    return 6.0 * params * entry["tokens_per_s"] / 1e9


def amortised_pairs_per_s(entry: dict, epoch_pairs: int) -> float:
    """Pairs/s over one epoch of `epoch_pairs` when the one-off reference precompute is
    charged to it: pairs / (precompute + pairs / steady pairs/s)."""
    return epoch_pairs / (entry.get("reference_precompute_s", 0.0) + epoch_pairs / entry["pairs_per_s"])


def enrich(merged: dict, peak_gflops: float, epoch_pairs: int) -> dict:
    """Add ratios to the TRL baselines, amortised throughput and FLOP fractions to each
    successful entry; returns {"configurations": {name: entry}}."""
    base = {b: merged.get(b, {}).get("pairs_per_s") for b in BASELINES}
    base_rss = merged.get("trl-defaults", {}).get("peak_rss_mb")
    for entry in merged.values():
        if "pairs_per_s" not in entry:
            continue
        entry["ratio_to_trl_defaults"] = _ratio(entry["pairs_per_s"], base["trl-defaults"])
        entry["ratio_to_trl_best"] = _ratio(entry["pairs_per_s"], base["trl-best"])
        entry["rss_ratio_to_trl_defaults"] = _ratio(entry["peak_rss_mb"], base_rss)
        entry["amortised_pairs_per_s"] = amortised_pairs_per_s(entry, epoch_pairs)
        for b in BASELINES:
            if b in merged and "pairs_per_s" in merged[b]:
                entry[f"amortised_ratio_to_{b.replace('-', '_')}"] = _ratio(
                    entry["amortised_pairs_per_s"], amortised_pairs_per_s(merged[b], epoch_pairs)
                )
        lora_base = merged.get("trl-lora", {})
        if entry.get("lora") and "pairs_per_s" in lora_base:  # LoRA against LoRA
            entry["ratio_to_trl_lora"] = _ratio(entry["pairs_per_s"], lora_base["pairs_per_s"])
            entry["rss_ratio_to_trl_lora"] = _ratio(entry["peak_rss_mb"], lora_base["peak_rss_mb"])
        entry["useful_gflops"] = useful_gflops(entry, entry["params_total"])
        entry["useful_gflops_non_embedding"] = useful_gflops(entry, entry["params_non_embedding"])
        entry["fraction_of_matmul_peak"] = entry["useful_gflops"] / peak_gflops
        entry["fraction_of_matmul_peak_non_embedding"] = entry["useful_gflops_non_embedding"] / peak_gflops
    return {"configurations": merged}


def _fmt(value, spec: str, missing: str = "—") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    return format(value, spec)


def comparison_rows(report: dict) -> list[str]:
    head = (
        "| configuration | s/step | pairs/s | tokens/s | peak RSS MB | × TRL-defaults | × TRL-best "
        "| RSS × TRL-def | ref precompute s | pairs/s incl. precompute (1 epoch) | useful GFLOP/s | % matmul peak |"
    )
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, e in report["configurations"].items():
        if "pairs_per_s" not in e:
            rows.append(f"| {name} | failed | | | | | | | | | | |")
            continue
        rows.append(
            f"| {name} | {e['seconds_per_step']:.2f} | {e['pairs_per_s']:.3f} | {e['tokens_per_s']:.1f} "
            f"| {e['peak_rss_mb']:.0f} | {_fmt(e.get('ratio_to_trl_defaults'), '.2f')} "
            f"| {_fmt(e.get('ratio_to_trl_best'), '.2f')} | {_fmt(e.get('rss_ratio_to_trl_defaults'), '.2f')} "
            f"| {e.get('reference_precompute_s', 0.0):.1f} | {e['amortised_pairs_per_s']:.3f} "
            f"| {e['useful_gflops']:.1f} | {100 * e['fraction_of_matmul_peak']:.0f}% |"
        )
    return rows


def rss_phase_line(name: str, e: dict) -> str:
    """Where a dpokit run's peak RSS came from: the phase that set it, and the RSS after
    loading, after the reference precompute, and the peak before the first step."""
    return (f"{name}: peak RSS {e['peak_rss_mb']:.0f} MB set in {e['peak_rss_phase']}; RSS after model load "
            f"{e['rss_after_model_load_mb']:.0f}, after reference precompute {e['rss_after_precompute_mb']:.0f}, "
            f"peak before the first step {e['peak_rss_before_steps_mb']:.0f}")


def format_comparison(report: dict) -> str:
    mm = report["matmul"]
    lines = ["", *comparison_rows(report), ""]
    any_entry = next((e for e in report["configurations"].values() if "data" in e), None)
    if any_entry:
        d = any_entry["data"]
        lines.append(
            f"data: {d['pairs']} pairs, mean prompt {d['mean_prompt']:.1f} / chosen {d['mean_chosen']:.1f} / "
            f"rejected {d['mean_rejected']:.1f} tokens ({d['tokens_per_pair']:.1f} per pair, prompt once); every "
            "engine trains on the same batches in the same order; tokens/s = prompt + chosen + rejected tokens "
            "(prompt once per pair) of the timed steps / their time"
        )
        lines.append(
            f"useful FLOPs = 6·N·tokens, N = {any_entry['params_total'] / 1e6:.1f}M (all parameters; "
            f"non-embedding {any_entry['params_non_embedding'] / 1e6:.1f}M in the JSON)"
        )
    lines.append(
        f"matmul peak: fp32 {mm['size']}x{mm['size']}: {mm['gflops_before']:.1f} GFLOP/s before, "
        f"{mm['gflops_after']:.1f} after; the table uses {mm['gflops_peak']:.1f}"
    )
    base = report["configurations"].get("dpokit-defaults", {}).get("losses")
    for name, e in report["configurations"].items():
        if base and e.get("losses") and name not in ("dpokit-defaults", "dpokit-best") and len(e["losses"]) == len(base):
            gaps = [abs(a - b) for a, b in zip(e["losses"], base)]
            lines.append(f"{name}: training loss vs dpokit-defaults over {len(gaps)} steps: max |Δ| {max(gaps):.4f}, "
                         f"last step {e['losses'][-1]:.4f} vs {base[-1]:.4f}")
        if e.get("peak_rss_phase"):
            lines.append(rss_phase_line(name, e))
        if e.get("ratio_to_trl_lora") is not None and name != "trl-lora":
            lines.append(f"{name}: {e['ratio_to_trl_lora']:.2f}× TRL-LoRA's pairs/s at {e['rss_ratio_to_trl_lora']:.2f}× its peak RSS")
    check = report.get("bf16_logprobs")
    if check and "max_abs_diff" in check:
        lines.append(
            f"bf16 autocast vs fp32 per-pair log-probs ({check['pairs']} pairs, mean |logp| {check['mean_abs_logp']:.1f}): "
            f"max abs diff {check['max_abs_diff']:.3f}, mean {check['mean_abs_diff']:.3f}, max relative "
            f"{check['max_rel_diff']:.2e}; chosen−rejected margin diff max {check['max_margin_diff']:.3f}, "
            f"mean {check['mean_margin_diff']:.3f}"
        )
    return "\n".join(lines)
