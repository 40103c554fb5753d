"""The low-rank study's report: the probe table, the verdict in words, the full fine-tune's
shift headline, and the plot (dpokit.studies.lowrank)."""

from __future__ import annotations

from dpokit.studies.common import ci_text, fmt, md_table


def _span(layers: list[int], all_layers: int | None = None) -> str:
    if not layers:
        return "-"
    if all_layers is not None and len(layers) == all_layers:
        return "all"
    if len(layers) == 1:
        return str(layers[0])
    return f"{layers[0]}–{layers[-1]}" if layers == list(range(layers[0], layers[-1] + 1)) else ",".join(map(str, layers))


def _ranges(layers: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0–2, 5, 7–8'."""
    runs: list[list[int]] = []
    for layer in sorted(layers):
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}–{r[-1]}" for r in runs)


def _share(row: dict) -> str:
    if row["share"] is None:
        return "n/a"
    lo, hi = row["share_ci95"]
    return f"{row['share']:.0%} [{lo:.0%}, {hi:.0%}]"


def table_md(rows: list[dict], reference: dict, full: dict) -> str:
    depth = max((len(r["layers"]) for r in rows), default=None)
    body = [["reference (π_ref)", "-", "-", "-", "0", ci_text(reference), "0", "-", "-"],
            ["full fine-tune", "every weight", "-", "all", "all", ci_text(full["point"]), fmt(full["point"]["kl"], 2),
             "100%", "-"]]
    for r in rows:
        ok = "yes" if r["as_specified"] and r["all_trained"] and r["params_saved"] == r["params_formula"] == r["params_peft"] else "NO"
        body.append([r["probe"], r["group"], r["r"], _span(r["layers"], depth), f"{r['params_saved']:,}", ci_text(r["point"]),
                     fmt(r["point"]["kl"], 2), _share(r), ok])
    gain_lo, gain_hi = full["gain_ci95"]
    return ("## Probes\n\nEvery run at the same budget on the same pairs, evaluated on the same "
            f"{full['heldout_prompts']} held-out prompts. The full fine-tune gains {full['gain']:+.3f} "
            f"[{gain_lo:+.3f}, {gain_hi:+.3f}] over the reference (paired over prompts). Share: the probe's gain over "
            "the reference as a fraction of the full fine-tune's, with Fieller's paired 95% interval. Adapter check: "
            "the saved LoRA tensors sit exactly on the probe's layers × modules, every one trained (B ≠ 0), and the "
            "parameter count equals Σ r·(d_in + d_out) and peft's own count.\n\n"
            + md_table(["probe", "group", "r", "layers", "trainable params", "reward [95% CI]", "KL", "share of full gain",
                        "adapter check"], body))


def findings_md(decision: dict, rows: list[dict]) -> str:
    firm = "firm" if decision["firm"] else "tentative"
    deciding = ", ".join(decision["deciding"]) or "none"
    lines = ["## Verdict", "", f"**{decision['label']}** ({firm}; deciding probes: {deciding}).", "",
             f"Rule: {decision['rule']}", ""]
    reach = decision["smallest_rank_reaching"]
    lines.append(f"- Smallest rank on every module reaching {decision['threshold']:.0%} of the full gain: "
                 f"{reach if reach is not None else 'none of the ranks tried'}.")
    over = set(decision.get("over_budget") or [])
    groups = [r for r in rows if r["group"] != "all" and r["share"] is not None]
    within = [r for r in groups if r["probe"] not in over]  # the best group is judged like the verdict: within the KL budget
    if within:
        best = max(within, key=lambda r: r["share"])
        lines.append(f"- Best single group within the KL budget: {best['probe']} with {_share(best)} of the gain at KL "
                     f"{fmt(best['point']['kl'], 2)}, {best['params_saved']:,} trainable parameters.")
    if decision.get("over_budget"):
        lines.append(f"- Over the KL budget ({fmt(decision['kl_budget'], 2)} nats), so not counted as recovering: "
                     f"{', '.join(decision['over_budget'])}.")
    return "\n".join(lines) + "\n"


def _pct(x) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def shift_md(shift: dict | None) -> str:
    if shift is None:
        return ""
    h = shift["headline"]
    lines = ["## Where the full fine-tune's change sits (dpokit inspect)", "",
             "Share of Σ‖ΔW‖_F² by module type: " + ", ".join(f"{k} {_pct(v)}" for k, v in h["energy_by_type"].items()) + ".",
             "By third of the stack (the probes' thirds): " + ", ".join(f"{k} {_pct(v)}" for k, v in h["energy_by_third"].items())
             + f". The top 10% of matrices hold {_pct(h['top10pct_energy_share'])} of it.", ""]
    ranks = [[g, fmt(v["median"], 1), v["max"], _pct(v["median_of_full"]), v["maps"]] for g, v in h["effective_rank"].items()]
    lines += ["Effective rank of ΔW (90% of the energy) over the changed maps inside the stack:", "",
              md_table(["maps", "median", "max", "median / full rank", "count"], ranks)]
    shifted = shift["summary"]["shifted_layers"]
    lines.append(f"Residual stream: the largest relative shift is at layer {h['largest_shift_layer']}; one direction explains "
                 f"> 50% of the shift at {len(h['top1_dominant_layers'])} of the {len(shifted)} shifted layers "
                 f"({_ranges(h['top1_dominant_layers']) or 'none'}).")
    if h["patching_by_third"] is not None:
        by = h["patching_by_third"]
        lines.append("Patching (policy's layer output into the reference, log-ratio of each prompt's best reference sample): "
                     "the gap moved within the bottom third " + _pct(by["bottom_third"]) + ", the middle " + _pct(by["middle"])
                     + ", the top third " + _pct(by["top_third"]) + f"; the largest single steps at layers "
                     f"{h['patching_top_layers']}; half the gap is moved by layer {h['patching_half_layer']}.")
    else:
        gap = (shift.get("patching") or {}).get("gap")
        lines.append(f"Patching: no log-ratio gap to move on these completions (gap {fmt(gap, 4)}; completions cut off by "
                     "inspect.max_length score nothing), so no fractions.")
    lines.append(f"\nFull report: `{shift['file']}`.")
    return "\n".join(lines) + "\n"


def plot_probes(fig, rows: list[dict], reference: dict, full: dict, threshold: float) -> None:
    """Left: reward vs KL of every run (95% CI); right: each probe's share of the full gain."""
    ax_f, ax_s = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    fig.set_size_inches(12, 4.6)
    points = [("reference", reference), ("full", full)] + [(r["probe"], r["point"]) for r in rows]
    for name, p in points:
        lo, hi = p["reward_ci95"]
        y = p["reward_mean"]
        ax_f.errorbar([p["kl"]], [y], yerr=[[max(0.0, y - lo)], [max(0.0, hi - y)]], fmt="o", capsize=3)
        ax_f.annotate(name.removeprefix("lora-"), (p["kl"], y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax_f.set(xlabel="KL(π‖π_ref), nats per completion", ylabel="held-out ground-truth reward", title="reward vs KL (95% CI)")
    names = [r["probe"].removeprefix("lora-") for r in rows]
    shares = [r["share"] if r["share"] is not None else 0.0 for r in rows]
    err = [[max(0.0, s - r["share_ci95"][0]) if r["share"] is not None else 0.0 for s, r in zip(shares, rows)],
           [max(0.0, r["share_ci95"][1] - s) if r["share"] is not None else 0.0 for s, r in zip(shares, rows)]]
    xs = list(range(len(rows)))
    ax_s.bar(xs, shares, yerr=err, capsize=3, color=["C0" if r["group"] == "all" else "C1" for r in rows])
    ax_s.axhline(threshold, color="grey", linestyle="--", linewidth=1)
    ax_s.set_xticks(xs, names, rotation=45, ha="right", fontsize=7)
    ax_s.set(ylabel="share of the full fine-tune's gain", title="share of gain (95% Fieller CI)")
