"""Case study 2's outputs: summary.json, report.md, plots (matplotlib Agg, no display) and the
held-out responses of every method (heldout_samples.json)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from dpokit.eval import instructions_eval as ie
from dpokit.report import _figure, _save


def _final(points: list[dict]) -> dict[str, dict]:
    """Each method's last point (its final model), in the order the methods ran."""
    out = {}
    for p in points:
        out[p["method"]] = p
    return out


def _block(p: dict) -> dict:
    """A point's numbers as summary.json states them (no responses)."""
    m = p["metrics"]
    return {"setting": p["setting"], "step": p["step"], "kl": p["kl"], "pass_rate": m["pass_rate"],
            "pass_rate_by_split": m["pass_rate_by_split"], "harmful_refusal_rate": m["refusal"]["harmful"],
            "harmless_refusal_rate": m["refusal"]["harmless"], "constraint_refusal_rate": m["refusal"]["constraint"],
            "acceptable_rate": m["acceptable_rate"], "degenerate_rate": m["degenerate_rate"],
            "length_words": m["length_words"], "length_tokens": m.get("length_tokens"), "ifbench": p.get("ifbench"),
            "heldout_digest": p["heldout_digest"]}


def _rate(r: dict | None):
    return None if r is None else r.get("rate")


def summarize(cfg, reference: dict, points: list[dict], bon_points: list[dict], counts: dict, judge: dict | None,
              rm_report: dict | None, prompt_counts: dict, ifbench_counts: dict | None, heldout, extra: dict) -> dict:
    """summary.json's content. Per method, the final model's numbers; `points` holds every
    evaluated step (without responses) for the pass-rate–KL plot and the matched-KL table."""
    final = _final(points)
    pft = final.get("preferred-ft")
    win = {}
    for name, p in final.items():
        win[name] = {"vs_reference": ie.win_rate(heldout, p["texts"], reference["texts"]),
                     "vs_preferred_ft": (ie.win_rate(heldout, p["texts"], pft["texts"]) if pft and name != "preferred-ft" else None)}
    names = {"reference": reference, **final}
    kinds = {}
    for p in heldout:
        kinds[f"{p.split}/{p.kind}"] = kinds.get(f"{p.split}/{p.kind}", 0) + 1
    slim = [{k: v for k, v in p.items() if k not in ("texts", "metrics")} for p in points]
    return {
        "title": "Case study 2: instruction following and harmlessness, judged by rules",
        "model": cfg.model,
        "heldout": {"prompts": len(heldout), "by_split_kind": dict(sorted(kinds.items())), "ids": [p.id for p in heldout],
                    "digest": reference["heldout_digest"], "samples_per_prompt": cfg.eval.samples_per_prompt},
        "reference": {**_block(reference), "kl": 0.0},
        "policy": {name: _block(p) for name, p in final.items()},
        "win_rate": win,
        "per_family": {name: p["metrics"]["per_family"] for name, p in names.items()},
        "refusal": {name: {"harmful": p["metrics"]["refusal"]["harmful"], "harmless": p["metrics"]["refusal"]["harmless"]}
                    for name, p in names.items()},
        "harmful_refusal_rate": {name: _rate(p["metrics"]["refusal"]["harmful"]) for name, p in names.items()},
        "harmless_refusal_rate": {name: _rate(p["metrics"]["refusal"]["harmless"]) for name, p in names.items()},
        "kl": {name: p["kl"] for name, p in names.items()},
        "best_of_n": bon_points,
        "matched_kl": {metric: ie.matched_kl(reference, slim + bon_points, "rloo-rm", metric)
                       for metric in ("pass_rate", "acceptable_rate")} if "rloo-rm" in final else None,
        "judge_agreement": judge,
        "pair_counts": counts,
        "reward_model": rm_report,
        "prompts": prompt_counts,
        "ifbench": ifbench_counts,
        "points": slim,
        **extra,
    }


# -- plots -----------------------------------------------------------------------------------------
def _err(r: dict) -> tuple[float, float]:
    lo, hi = r["ci95"]
    if r["rate"] is None or any(isinstance(x, float) and math.isnan(x) for x in (lo, hi)):
        return 0.0, 0.0
    return max(0.0, r["rate"] - lo), max(0.0, hi - r["rate"])


def plot_rates(summary: dict, out_png) -> Path:
    """Pass rate (new questions, held-out wording) and refusal rates (harmful, harmless) per model, 95% CI."""
    names = ["reference", *summary["policy"]]
    blocks = {"reference": summary["reference"], **summary["policy"]}
    fig, (ax1, ax2) = _figure(2, width=12, height=4.2)
    series1 = [("new questions", lambda b: b["pass_rate_by_split"].get("heldout_question")),
               ("held-out wording", lambda b: b["pass_rate_by_split"].get("heldout_wording"))]
    series2 = [("harmful (refuse)", lambda b: b["harmful_refusal_rate"]), ("harmless (over-refusal)", lambda b: b["harmless_refusal_rate"])]
    for ax, series, title in ((ax1, series1, "constraint pass rate"), (ax2, series2, "refusal rate")):
        width = 0.8 / len(series)
        for j, (label, get) in enumerate(series):
            rs = [get(blocks[n]) or {"rate": None, "ci95": [math.nan, math.nan]} for n in names]
            xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(names))]
            ax.bar(xs, [r["rate"] or 0.0 for r in rs], width, yerr=list(zip(*[_err(r) for r in rs])), capsize=3, label=label)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_ylim(0, 1)
        ax.set_title(title)
        ax.legend(fontsize=8)
    return _save(fig, out_png)


def plot_pass_vs_kl(summary: dict, out_png) -> Path:
    """Held-out pass rate against KL(π‖π_ref): every evaluated step of each method (from the
    reference at KL 0, or from its own step 0 when it starts elsewhere: from Preferred-FT), and
    the Best-of-N curves at their KL bound."""
    fig, (ax,) = _figure(1, width=7, height=4.5)
    ref = summary["reference"]["pass_rate"]["rate"]
    groups = {}
    for p in summary["points"] + summary["best_of_n"]:
        groups.setdefault(p["method"], []).append(p)
    for method, pts in groups.items():
        start = [] if method.startswith("best-of-n") or not ie.starts_at_reference(pts) else [(0.0, ref)]
        xy = start + [(p["kl"], p["pass_rate"]["rate"]) for p in pts if p["pass_rate"]["rate"] is not None]
        ax.plot([x for x, _ in xy], [y for _, y in xy], marker="o", label=method, linestyle="--" if method.startswith("best") else "-")
    ax.scatter([0.0], [ref], color="black", zorder=5, label="reference")
    ax.set_xlabel("KL(π‖π_ref), nats per response (Best-of-N: the bound log N − (N−1)/N)")
    ax.set_ylabel("held-out pass rate")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    return _save(fig, out_png)


def plot_families(summary: dict, out_png) -> Path:
    """Pass rate per constraint family (rows) and model (columns), as a heat map with the values."""
    names = list(summary["per_family"])
    families = sorted({f for fams in summary["per_family"].values() for f in fams})
    grid = [[(summary["per_family"][n].get(f) or {}).get("rate") for n in names] for f in families]
    fig, (ax,) = _figure(1, width=1.2 * len(names) + 3, height=0.4 * len(families) + 1.5)
    ax.imshow([[math.nan if v is None else v for v in row] for row in grid], vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, "–" if v is None else f"{v:.2f}", ha="center", va="center", color="white" if (v or 0) < 0.6 else "black", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(families)), families)
    ax.set_title("held-out pass rate per family")
    return _save(fig, out_png)


def plot_pass_vs_labels(online: dict, out_png) -> Path:
    """Held-out pass rate (95% CI) against the labelled pairs used: each online chain after
    each round (from its start at 0 labels: the reference, or Preferred-FT with 0 additional
    labels), and the offline DPO run at all N labels."""
    fig, (ax,) = _figure(1, width=7, height=4.5)
    shift = 0.01 * max(online["labels_budget"], 1)  # chains side by side: round 1 and the reference are shared
    for j, (name, curve) in enumerate(online["chains"].items()):
        pts = [c for c in curve if c["pass_rate"]["rate"] is not None]
        ax.errorbar([c["labels"] + (j - (len(online["chains"]) - 1) / 2) * shift for c in pts], [c["pass_rate"]["rate"] for c in pts], yerr=list(zip(*[_err(c["pass_rate"]) for c in pts])),
                    marker="o", capsize=3, label=f"online, reference {name}")
    off = online["offline"]
    if off["pass_rate"]["rate"] is not None:
        ax.errorbar([off["labels"]], [off["pass_rate"]["rate"]], yerr=[[e] for e in _err(off["pass_rate"])], marker="s",
                    color="black", capsize=4, linestyle="none", label="offline DPO (one round)")
    ax.set_xlabel("labelled DPO pairs used" + (" after Preferred-FT" if online.get("start") == "preferred-ft" else ""))
    ax.set_ylabel("held-out pass rate")
    ax.set_ylim(0, 1)
    ax.set_title(f"{online['rounds']} online rounds vs one offline round at {online['labels_budget']} labels")
    ax.legend(fontsize=8)
    return _save(fig, out_png)


def _online_md(online: dict | None) -> list[str]:
    if not online:
        return []
    off = online["offline"]
    # from Preferred-FT (SFT on the same pairs' chosen responses), both arms start there: its labels are shared
    pft = (" Both arms start from Preferred-FT (trained on the chosen responses of the offline pairs, a cost they "
           "share): the labels counted are the DPO pairs added after it.") if online.get("start") == "preferred-ft" else ""
    out = ["", "## Hybrid: online DPO rounds on failure slices", "",
           (f"{online['rounds']} rounds of {online['round_budgets']} labelled pairs (what a round cannot spend carries to the "
            f"next), against one offline DPO round on all {online['labels_budget']}: offline pass rate {_pct(off['pass_rate'])} "
            f"at KL {off['kl']:.2f}. Each round samples the current policy on {online['prompts_per_draw']} fresh train prompts "
            f"per draw, keeps the prompts where it still fails (worst family first) and trains on pairs built there.{pft}"), "",
           "| reference | round | labels (round / total) | sampled + revised | prompts sampled / failing | pass rate | KL |",
           "|---|---|---|---|---|---|---|"]
    for name, curve in online["chains"].items():
        for c in curve[1:]:
            o = c["by_origin"]
            out.append(f"| {name} | {c['round']} | {c['labels_used']} / {c['labels']} | {o.get('sampled', 0)} + {o.get('revised', 0)} | "
                       f"{c['prompts_sampled']} / {c['prompts_failing']} | {_pct(c['pass_rate'])} | {c['kl']:.2f} |")
    out.append("")
    out += [(f"- reference {name}: {f['labels_used']} labels used ({f['unspent']} unspent), final pass rate {_pct(f['pass_rate'])}: "
             f"{f['vs_offline']} against offline.") for name, f in online["final"].items()]
    return out


# -- report.md -------------------------------------------------------------------------------------
def _pct(r) -> str:
    if r is None or r.get("rate") is None:
        return "n/a"
    lo, hi = r["ci95"]
    return f"{r['rate']:.1%} [{lo:.1%}, {hi:.1%}]" if not math.isnan(lo) else f"{r['rate']:.1%}"


def _num(x, fmt="{:.2f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def report_md(summary: dict, examples: list[dict], plots: dict) -> str:
    c, h = summary["pair_counts"], summary["heldout"]
    lines = [f"# {summary['title']}", "",
             (f"Model `{summary['model']}`. Held-out: {h['prompts']} prompts ({', '.join(f'{k} {v}' for k, v in h['by_split_kind'].items())}), "
              f"{h['samples_per_prompt']} response(s) per prompt and model, the same prompts for every model. Pairs: {c['total']} "
              f"({c['sampled']} from sampling, {c['revised']} from critique → revision, "
              + (f"{c['contrast']} harmless answers against a template refusal, " if c.get("contrast") else "")
              + f"{c['file']} from files). "
              "Intervals: Wilson 95% over responses."), "",
             "## Held-out results (final model of each method)", "",
             ("| model | KL | pass rate | new questions | held-out wording | harmful refused | harmless refused | acceptable "
              "| win vs reference | win vs Preferred-FT | words |"), "|---|---|---|---|---|---|---|---|---|---|---|"]
    blocks = {"reference": summary["reference"], **summary["policy"]}
    for name, b in blocks.items():
        w = summary["win_rate"].get(name, {})
        by = b["pass_rate_by_split"]
        lines.append(f"| {name} | {b['kl']:.2f} | {_pct(b['pass_rate'])} | {_pct(by.get('heldout_question'))} | "
                     f"{_pct(by.get('heldout_wording'))} | {_pct(b['harmful_refusal_rate'])} | {_pct(b['harmless_refusal_rate'])} | "
                     f"{_pct(b['acceptable_rate'])} | {_num((w.get('vs_reference') or {}).get('rate'), '{:.1%}')} | "
                     f"{_num((w.get('vs_preferred_ft') or {}).get('rate'), '{:.1%}')} | {b['length_words']:.1f} |")
    mk = (summary.get("matched_kl") or {}).get("pass_rate")
    if mk:
        lines += ["", f"## At matched KL ({mk['kl']:.2f} nats, the final KL of {mk['against']})", "",
                  ("Each method's pass rate interpolated along its own evaluated steps (from the reference at KL 0, or "
                   "from its own starting point: Preferred-FT's, for a run from Preferred-FT); n/a where the method's "
                   "curve does not reach that KL."), "", "| method | pass rate at that KL |", "|---|---|"]
        lines += [f"| {m} | {_num(v, '{:.1%}')} |" for m, v in mk["values"].items()]
    lines += ["", "## Per family (held-out pass rate)", "", "| family | " + " | ".join(summary["per_family"]) + " |",
              "|---|" + "---|" * len(summary["per_family"])]
    families = sorted({f for fams in summary["per_family"].values() for f in fams})
    lines += [f"| {f} | " + " | ".join(_pct(summary["per_family"][n].get(f)) for n in summary["per_family"]) + " |" for f in families]
    if summary["best_of_n"]:
        lines += ["", "## Best-of-N from the reference", "", "| selector | N | KL bound | pass rate | harmful refused | harmless refused |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {p['method']} | {p['n']} | {p['kl']:.2f} | {_pct(p['pass_rate'])} | {_pct(p['harmful_refusal'])} | "
                  f"{_pct(p['harmless_refusal'])} |" for p in summary["best_of_n"]]
    lines += _ifbench_md(summary) + _judge_md(summary.get("judge_agreement")) + _pairs_md(c) + _online_md(summary.get("online"))
    rm = summary.get("reward_model")
    if rm:
        on = rm.get("on_best_of_n_samples") or {}
        lines += ["", "## Reward model", "", (f"Held-out pair accuracy {_num(rm.get('heldout_pair_accuracy'))}; on the Best-of-N "
                  f"samples, ordered as the checker orders them: {_num(on.get('accuracy'))} over {on.get('pairs', 0)} within-prompt pairs.")]
    lines += ["", "## Plots", ""] + [f"![{t}]({Path(p).name})" for t, p in plots.items()]
    lines += ["", "## Examples (first reference and first DPO response)", ""]
    for ex in examples:
        lines += [f"**{ex['prompt']}**", "", f"- reference: {ex['reference']!r}", f"- dpo: {ex['policy']!r}", ""]
    walls = summary.get("run_wall_s") or {}
    lines += ["## Wall time", "", "| run | min |", "|---|---|"] + [f"| {k} | {v / 60:.1f} |" for k, v in walls.items()]
    lines += ["", f"This invocation: {summary.get('elapsed_s', 0) / 60:.1f} min (reused runs: {', '.join(summary.get('reused_runs') or []) or 'none'})."]
    return "\n".join(lines) + "\n"


def _ifbench_md(summary: dict) -> list[str]:
    counts = summary.get("ifbench")
    if not counts:
        return []
    blocks = {"reference": summary["reference"], **summary["policy"]}
    out = ["", "## IFBench (out of distribution)", "",
           (f"{counts['prompts_used']} of {counts['prompts_total']} prompts sampled, each with an instruction our checkers "
            f"judge ({counts['instructions_judged']} instructions; {counts.get('prompts_judged_whole', 0)} prompts judged "
            f"whole); {counts['instructions_skipped']} instructions skipped: {counts['skip_reason']}."),
           "", "| model | instruction pass | prompt pass (judged whole) |", "|---|---|---|"]
    return out + [f"| {n} | {_pct((b.get('ifbench') or {}).get('instruction_pass'))} | "
                  f"{_pct((b.get('ifbench') or {}).get('prompt_pass'))} |" for n, b in blocks.items()]


def _judge_md(judge: dict | None) -> list[str]:
    if not judge or not judge.get("n"):
        return []
    out = ["", "## The bundled model as a pairwise judge", "",
           (f"On {judge['n']} labelled pairs, both orders: agreement with the checkers {_num(judge['agreement'], '{:.1%}')}, "
            f"same answer in both orders {_num(judge['consistent'], '{:.1%}')}, says \"A\" {_num(judge['says_a'], '{:.1%}')} of the time."),
           "", "| group | n | agreement |", "|---|---|---|"]
    for key, vals in judge["by"].items():
        out += [f"| {key}={v} | {s['n']} | {_num(s['agreement'], '{:.1%}')} |" for v, s in vals.items()]
    return out


def _pairs_md(c: dict) -> list[str]:
    contrast = f" + {c['contrast']} contrast" if c.get("contrast") else ""
    out = ["", "## Pairs", "", f"{c['sampled']} sampled + {c['revised']} revised{contrast} + {c['file']} from files = {c['total']}."]
    rules = c.get("rules")
    if rules:
        out += [(f"By principle: {rules['by_principle']}. By family: {rules['by_family']}. Prompts without a pair: "
                 f"{rules['prompts_without_pair']} ({rules['no_pair_reasons']}).")]
    if c.get("files"):
        out.append(f"Pair files: {c['files']['pairs']} kept, {c['files']['skipped']} skipped ({c['files']['skip_reasons']}).")
    return out


def write_outputs(run_dir: Path, summary: dict, reference: dict, points: list[dict], bon_points, heldout, cfg, stage) -> None:
    final = _final(points)
    plots = {"Pass and refusal rates": plot_rates(summary, run_dir / "rates.png"),
             "Pass rate vs KL": plot_pass_vs_kl(summary, run_dir / "pass_vs_kl.png"),
             "Per family": plot_families(summary, run_dir / "families.png")}
    if summary.get("online"):
        plots["Pass rate vs labels used"] = plot_pass_vs_labels(summary["online"], run_dir / "pass_vs_labels.png")
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    samples = {"prompts": [p.to_dict() for p in heldout], "reference": reference["texts"], **{m: p["texts"] for m, p in final.items()}}
    (run_dir / "heldout_samples.json").write_text(json.dumps(samples))
    dpo = final.get("dpo")
    step = max(1, len(heldout) // max(cfg.eval.examples, 1))
    examples = [{"prompt": heldout[i].text, "reference": reference["texts"][i][0], "policy": dpo["texts"][i][0]}
                for i in range(0, len(heldout), step)][: cfg.eval.examples] if dpo else []
    (run_dir / "report.md").write_text(report_md(summary, examples, plots))
    for name, b in {"reference": summary["reference"], **summary["policy"]}.items():
        stage(f"{name}: pass {_pct(b['pass_rate'])}, harmful refused {_pct(b['harmful_refusal_rate'])}, "
              f"harmless refused {_pct(b['harmless_refusal_rate'])}, KL {b['kl']:.2f}")
    stage(f"report: {run_dir / 'report.md'}  summary: {run_dir / 'summary.json'}")
