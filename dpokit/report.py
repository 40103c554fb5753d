"""Plots (PNG) and a one-page report (Markdown + self-contained HTML) for a run.

Plots use matplotlib's object API (`Figure` + the Agg canvas) rather than pyplot, so
importing this module never switches the caller's backend and needs no display.
The HTML page inlines every plot as a base64 `data:` URI and has no external resources,
so it opens from disk with no network; all model text is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _figure(ncols: int = 1, width: float = 6.4, height: float = 4.0):
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)  # attaches the Agg canvas so savefig renders without pyplot
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _save(fig, out_png) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, format="png")
    return out


def _read_jsonl(path) -> list[dict]:
    rows = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


def _series(rows: list[dict], key: str, split: str) -> tuple[list[float], list[float]]:
    """(steps, values) of `key` for lines of one split; lines without `split` are train."""
    xs, ys = [], []
    for r in rows:
        if r.get("split", "train") == split and key in r and "step" in r and r[key] is not None:
            xs.append(float(r["step"]))
            ys.append(float(r[key]))
    return xs, ys


def plot_training(metrics_jsonl_path, out_png) -> Path:
    """Loss and `rewards/margins` against step: train lines as a curve, eval lines
    (`"split": "eval"`) as markers."""
    rows = _read_jsonl(metrics_jsonl_path)
    fig, axes = _figure(ncols=2, width=10.0, height=3.8)
    for ax, key, title in zip(axes, ["loss", "rewards/margins"], ["loss", "reward margin (β·h)"]):
        drawn = False
        for split, style in [("train", dict(lw=1.2)), ("eval", dict(marker="o", ls="--", lw=1))]:
            xs, ys = _series(rows, key, split)
            if xs:
                ax.plot(xs, ys, label=split, **style)
                drawn = True
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no '{key}' in metrics", ha="center", va="center", transform=ax.transAxes)
        if key == "loss":
            ax.axhline(math.log(2), color="grey", lw=0.8, ls=":")  # DPO loss at init
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    return _save(fig, out_png)


def plot_reward_distributions(ref_rewards, policy_rewards, out_png) -> Path:
    """Overlaid histograms of ground-truth reward on [-1, 1], means as dashed lines."""
    fig, (ax,) = _figure()
    bins = [-1 + 0.05 * i for i in range(41)]
    for values, label, color in [(ref_rewards, "reference", "tab:blue"), (policy_rewards, "policy", "tab:orange")]:
        values = [float(v) for v in values]
        if not values:
            continue
        mean = sum(values) / len(values)
        ax.hist(values, bins=bins, histtype="stepfilled", alpha=0.35, color=color,
                label=f"{label} (mean {mean:.2f}, n={len(values)})")
        ax.axvline(mean, color=color, ls="--", lw=1.5)
    ax.set_xlim(-1.05, 1.05)
    ax.set_xlabel("ground-truth reward (VADER compound)")
    ax.set_ylabel("completions")
    ax.set_title("reward on held-out prompts: before vs after")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out_png)


def plot_reward_vs_kl(points: list[dict], out_png) -> Path:
    """One point per run (or β): x = KL(π‖π_ref) in nats, y = mean reward with its 95%
    interval as an error bar. Each point is dict(label, kl, reward_mean, reward_ci95)."""
    fig, (ax,) = _figure()
    for p in sorted(points, key=lambda p: float(p["kl"])):
        mean = float(p["reward_mean"])
        lo, hi = (float(v) for v in p.get("reward_ci95") or (mean, mean))
        if math.isnan(lo) or math.isnan(hi):
            lo = hi = mean
        yerr = [[mean - lo], [hi - mean]]
        ax.errorbar([float(p["kl"])], [mean], yerr=yerr, fmt="o", capsize=4, label=str(p["label"]))
        ax.annotate(str(p["label"]), (float(p["kl"]), mean), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xlabel("KL(π ‖ π_ref)  [nats, from policy samples]")
    ax.set_ylabel("mean ground-truth reward")
    ax.set_title("reward vs KL")
    if points:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out_png)


# ---------------------------------------------------------------- report text


def _get(summary: dict, dotted: str):
    """summary['reference']['reward_mean'] or summary['reference.reward_mean'] (or None)."""
    if dotted in summary:
        return summary[dotted]
    node = summary
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _num(x, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _ci(ci) -> str:
    return f"[{_num(ci[0])}, {_num(ci[1])}]" if ci is not None and len(ci) == 2 else "[n/a]"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _calibration_lines(cal: dict | None) -> list[str]:
    """Implicit margin vs ground-truth gap (dpokit.eval.calibration), when measured."""
    if not cal or not cal.get("pairs"):
        return []
    rho = cal.get("spearman")
    bins = "; ".join(
        f"gap {_num(b['gap_min'])}–{_num(b['gap_max'])}: {_pct(b['accuracy'])} of {b['pairs']}" for b in cal.get("by_gap", [])
    )
    corr = f"Spearman ρ = {_num(rho)}" if rho is not None else "Spearman ρ undefined"
    return [f"Implicit margin vs ground-truth gap on {cal['pairs']} held-out pairs: {corr}; accuracy by gap: {bins}."]


def headline(summary: dict) -> list[str]:
    """Plain-number sentences about the run, one per measured quantity present."""
    g = lambda key: _get(summary, key)  # noqa: E731
    out = []
    ref, pol = g("reference.reward_mean"), g("policy.reward_mean")
    if ref is not None and pol is not None:
        n = g("n_heldout")
        where = f" on {n} held-out prompts" if n is not None else " on held-out prompts"
        before = f"{_num(ref)} {_ci(g('reference.reward_ci95'))}"
        after = f"{_num(pol)} {_ci(g('policy.reward_ci95'))}"
        if pol == ref:
            out.append(f"Mean ground-truth reward was unchanged: {before} for the reference, "
                       f"{after} for the policy{where} (95% intervals).")
        else:
            verb = "rose" if pol > ref else "fell"
            out.append(f"Mean ground-truth reward {verb} from {before} to {after}{where} (95% intervals).")
        rc, pc = g("reference.reward_ci95"), g("policy.reward_ci95")
        if rc and pc and all(v is not None and math.isfinite(v) for v in [*rc, *pc]):
            overlap = not (pc[0] > rc[1] or rc[0] > pc[1])
            out.append("The two 95% intervals " + ("overlap." if overlap else "do not overlap."))
    if g("win_rate") is not None:
        out.append(f"Win rate of the policy against the reference: {_pct(g('win_rate'))} "
                   "(same prompt, ground truth decides, ties count half).")
    if g("kl") is not None:
        out.append(f"KL(π‖π_ref): {_num(g('kl'), 1)} nats (mean log-ratio over policy samples).")
    if g("implicit_accuracy") is not None:
        out.append(f"Implicit-reward accuracy on held-out pairs: {_pct(g('implicit_accuracy'))}.")
    out.extend(_calibration_lines(g("margin_calibration")))
    change = g("likelihood_change")
    if change:
        both = change["chosen"] < 0 and change["rejected"] < 0
        out.append(f"Log-likelihood change vs the reference on held-out pairs: chosen {_num(change['chosen'], 1)}, "
                   f"rejected {_num(change['rejected'], 1)} nats per completion"
                   + (" (both fell: likelihood displacement)." if both else "."))
    rl, pl = g("reference.length_mean"), g("policy.length_mean")
    if rl is not None and pl is not None:
        out.append(f"Mean completion length: {_num(rl, 1)} tokens (reference), {_num(pl, 1)} (policy).")
    if g("elapsed_s") is not None:
        out.append(f"Elapsed: {_num(g('elapsed_s') / 60, 1)} min.")
    return out


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            rows.extend(_flatten(v, key + "."))
        elif isinstance(v, float):
            rows.append((key, _num(v, 4)))
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) for x in v):
            rows.append((key, "[" + ", ".join(_num(float(x), 4) for x in v) + "]"))
        else:
            rows.append((key, str(v)))
    return rows


def _md_cell(text) -> str:
    # Markdown renders inline HTML, so escape it; pipes and newlines would break the table.
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def _write_markdown(path: Path, title: str, sentences, table, plots, examples) -> None:
    lines = [f"# {html.escape(title)}", ""]
    lines += [f"- {s}" for s in sentences] + [""]
    for name, png in plots.items():
        rel = Path(png)
        try:
            rel = rel.resolve().relative_to(path.parent.resolve())
        except ValueError:
            pass  # plot lives outside the run directory: keep the path as given
        lines += [f"## {html.escape(name)}", "", f"![{html.escape(name)}]({rel.as_posix()})", ""]
    if examples:
        lines += ["## Examples (held-out prompts)", "",
                  "| prompt | reference | reward | policy | reward |", "|---|---|---|---|---|"]
        for ex in examples:
            lines.append("| " + " | ".join([
                _md_cell(ex["prompt"]), _md_cell(ex["reference"]), _num(ex.get("reference_reward")),
                _md_cell(ex["policy"]), _num(ex.get("policy_reward"))]) + " |")
        lines.append("")
    lines += ["## All numbers", "", "| key | value |", "|---|---|"]
    lines += [f"| {_md_cell(k)} | {_md_cell(v)} |" for k, v in table] + [""]
    path.write_text("\n".join(lines))


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em} h2{font-size:1.2em;margin-top:1.6em} ul.headline li{margin:.3em 0}
img{max-width:100%;border:1px solid #ddd}
table{border-collapse:collapse;width:100%;font-size:.9em}
td,th{border:1px solid #ccc;padding:.35em .5em;vertical-align:top;text-align:left}
td.text{white-space:pre-wrap} td.num{text-align:right;white-space:nowrap}
"""

# Records on <body> whether every image decoded (naturalWidth > 0): lets a headless
# browser test check that the inlined plots really render, via --dump-dom.
_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.length > 0 && imgs.every(function (im) { return im.complete && im.naturalWidth > 0; });
  document.body.setAttribute("data-images-loaded", ok ? "true" : "false");
  document.body.setAttribute("data-image-count", String(imgs.length));
});
"""


def _write_html(path: Path, title: str, sentences, table, plots, examples) -> None:
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{e(title)}</title><style>{_CSS}</style><script>{_SCRIPT}</script></head><body>",
             f"<h1>{e(title)}</h1>", '<ul class="headline">']
    parts += [f"<li>{e(s)}</li>" for s in sentences] + ["</ul>"]
    for name, png in plots.items():
        data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
        parts += [f"<h2>{e(name)}</h2>", f'<img alt="{e(name)}" src="data:image/png;base64,{data}">']
    if examples:
        parts += ["<h2>Examples (held-out prompts)</h2>", "<table><tr><th>prompt</th><th>reference</th>"
                  "<th>reward</th><th>policy</th><th>reward</th></tr>"]
        for ex in examples:
            parts.append(
                f'<tr><td class="text">{e(str(ex["prompt"]))}</td><td class="text">{e(str(ex["reference"]))}</td>'
                f'<td class="num">{_num(ex.get("reference_reward"))}</td><td class="text">{e(str(ex["policy"]))}</td>'
                f'<td class="num">{_num(ex.get("policy_reward"))}</td></tr>')
        parts.append("</table>")
    parts += ["<h2>All numbers</h2>", "<table><tr><th>key</th><th>value</th></tr>"]
    parts += [f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in table]
    parts += ["</table>", "</body></html>", ""]
    path.write_text("\n".join(parts), encoding="utf-8")


def write_report(run_dir, summary: dict, plots: dict, examples: list[dict]) -> tuple[Path, Path]:
    """Write `report.md` and a self-contained `report.html` into `run_dir`.

    summary:  the run's numbers (nested like summary.json, or with dotted keys);
              `title` and `n_heldout` are used when present.
    plots:    section name -> PNG path (referenced by the Markdown, inlined in the HTML).
    examples: dict(prompt, reference, policy, reference_reward, policy_reward) each.
    Returns (markdown_path, html_path).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    title = str(summary.get("title") or f"dpokit report: {run_dir.name}")
    sentences = headline(summary)
    table = _flatten({k: v for k, v in summary.items() if k != "title"})
    md_path, html_path = run_dir / "report.md", run_dir / "report.html"
    _write_markdown(md_path, title, sentences, table, plots, examples)
    _write_html(html_path, title, sentences, table, plots, examples)
    return md_path, html_path
