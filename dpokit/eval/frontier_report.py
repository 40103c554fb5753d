"""The reward–KL frontier's outputs: frontier.json / .csv / .png / .md from a list of points,
the best method under each KL budget in plain sentences, and a plot of reward-model
over-optimisation for a PPO run.

A point is dict(method, setting, step, kl, reward_mean, reward_ci95=[lo, hi], win_rate, n,
elapsed_s), plus any extra keys. `step` is the training step/round it was evaluated at, so one
run (same method and setting) contributes several points. Values may be NaN (a CI over one
prompt): they are written as JSON null / an empty CSV cell and never win a comparison.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from matplotlib.ticker import FuncFormatter, SymmetricalLogLocator

from dpokit.report import _ci, _figure, _md_cell, _num, _save, _series

KEYS = ("method", "setting", "step", "kl", "reward_mean", "reward_ci95", "win_rate", "n", "elapsed_s")
# Table / legend order; methods not listed here follow, alphabetically.
METHODS = ("reference", "dpo", "preferred-ft", "ppo", "ppo-gt", "rloo", "best-of-n (reward model)", "best-of-n (oracle)")
_STYLE = {  # method -> (colour, marker)
    "dpo": ("tab:blue", "o"), "preferred-ft": ("tab:cyan", "v"), "ppo": ("tab:red", "s"),
    "ppo-gt": ("tab:brown", "P"), "rloo": ("tab:purple", "D"),
    "best-of-n (reward model)": ("tab:green", "^"), "best-of-n (oracle)": ("tab:olive", "x"),
}
_FALLBACK = [("tab:pink", "h"), ("tab:gray", "<"), ("tab:orange", ">")]


def _f(x) -> float:
    """float, with None as NaN: a missing value and an undefined one are treated alike."""
    return math.nan if x is None else float(x)


def _ci_pair(p: dict) -> tuple[float, float]:
    ci = p.get("reward_ci95")
    return (_f(ci[0]), _f(ci[1])) if ci is not None and len(ci) == 2 else (math.nan, math.nan)


def _is_bon(method: str) -> bool:
    return method.startswith("best-of-n")


def _method_key(method: str):
    return (METHODS.index(method), "") if method in METHODS else (len(METHODS), method)


def _kl_key(p: dict):
    kl = _f(p["kl"])
    return (math.isnan(kl), 0.0 if math.isnan(kl) else kl)


def _check(points: list[dict]) -> None:
    for i, p in enumerate(points):
        missing = [k for k in KEYS if k not in p]
        if missing:
            raise ValueError(f"frontier point {i} ({p.get('method')!r} {p.get('setting')!r}) lacks {', '.join(missing)}")


# ------------------------------------------------------------------------------ JSON / CSV


def _jsonable(x):
    """NaN and ±inf become null: strict JSON has no literal for them (json.dumps would write NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _csv_cell(v) -> str:
    v = _jsonable(v)
    if v is None:
        return ""
    return json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else str(v)


def _write_csv(path: Path, points: list[dict]) -> None:
    extra = [k for p in points for k in p if k not in KEYS]
    columns = [k for k in KEYS if k != "reward_ci95"]
    at = columns.index("reward_mean") + 1
    columns[at:at] = ["reward_ci_lo", "reward_ci_hi"]
    columns += list(dict.fromkeys(extra))  # first-seen order, once each
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for p in points:
            lo, hi = _ci_pair(p)
            row = {k: v for k, v in p.items() if k != "reward_ci95"} | {"reward_ci_lo": lo, "reward_ci_hi": hi}
            w.writerow({k: _csv_cell(row.get(k)) for k in columns})


# ------------------------------------------------------------------------------ the plot


def _style(method: str, seen: dict) -> tuple[str, str]:
    if method not in _STYLE and method not in seen:
        seen[method] = _FALLBACK[len(seen) % len(_FALLBACK)]
    return _STYLE.get(method) or seen[method]


def _plot_run(ax, pts: list[dict], colour: str, marker: str, label: str | None, line_w: float) -> None:
    pts = [p for p in pts if math.isfinite(_f(p["kl"])) and math.isfinite(_f(p["reward_mean"]))]
    if not pts:
        return
    xs, ys = [_f(p["kl"]) for p in pts], [_f(p["reward_mean"]) for p in pts]
    # An undefined CI gets no bar; max(0, ·) because matplotlib refuses negative error lengths.
    below = [0.0 if math.isnan(lo) else max(0.0, y - lo) for y, (lo, _) in zip(ys, map(_ci_pair, pts))]
    above = [0.0 if math.isnan(hi) else max(0.0, hi - y) for y, (_, hi) in zip(ys, map(_ci_pair, pts))]
    ax.plot(xs, ys, color=colour, lw=line_w, alpha=0.7)
    ax.errorbar(xs, ys, yerr=[below, above], fmt=marker, color=colour, ms=5, capsize=2, elinewidth=0.8, label=label)
    ax.annotate(str(pts[-1]["setting"]), (xs[-1], ys[-1]), textcoords="offset points", xytext=(4, 4),
                fontsize=6, color=colour)


def plot_frontier(points: list[dict], out_png, title: str = "reward–KL frontier") -> Path:
    """Reward vs KL: per run a thin line in step order (its intermediate points), Best-of-N as
    one line over N, the reference as a star with a dashed line at its reward."""
    fig, (ax,) = _figure(width=8.0, height=5.0)
    seen: dict = {}
    for method in sorted({p["method"] for p in points}, key=_method_key):
        mine = [p for p in points if p["method"] == method]
        if method == "reference":
            for p in mine:
                ax.plot([_f(p["kl"])], [_f(p["reward_mean"])], marker="*", ms=14, color="black", ls="none", label="reference")
                ax.axhline(_f(p["reward_mean"]), color="black", ls="--", lw=0.8, alpha=0.6)
            continue
        colour, marker = _style(method, seen)
        if _is_bon(method):
            # One point per N; KL = log N − (N−1)/N rises with N, so KL order is N order.
            _plot_run(ax, sorted(mine, key=_kl_key), colour, marker, method, line_w=1.5)
            continue
        for i, setting in enumerate(dict.fromkeys(p["setting"] for p in mine)):
            run = sorted((p for p in mine if p["setting"] == setting), key=lambda p: p["step"])
            _plot_run(ax, run, colour, marker, method if i == 0 else None, line_w=0.8)
    # symlog: KL spans 0..~20 nats, and on a linear axis the reference (KL 0), Best-of-N
    # (≤ log 64 − 1 ≈ 3.2 nats) and the early steps of every run crowd into the left fifth; log
    # cannot show KL 0 (or a small negative Monte-Carlo estimate). symlog is linear on [-1, 1]
    # and logarithmic beyond, so both ends stay readable.
    ax.set_xscale("symlog", linthresh=1.0)
    ax.xaxis.set_major_locator(SymmetricalLogLocator(base=10, linthresh=1.0, subs=[1, 2, 5]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 0 1 2 5 10 20, not 10^0
    kls = [_f(p["kl"]) for p in points if math.isfinite(_f(p["kl"]))]
    ax.set_xlim(-0.1, max([2.0] + [1.3 * k for k in kls]))  # at least 0..2 nats, so the ticks read 0 1 2
    ax.set_xlabel("KL(π‖π_ref), nats")
    ax.set_ylabel("ground-truth reward")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if points:
        ax.legend(fontsize=7, loc="best")
    return _save(fig, out_png)


# ------------------------------------------------------------------------------ winners


def _best(pts: list[dict]) -> dict | None:
    """Highest reward_mean; equal rewards go to the lower KL (the cheaper point). NaN never wins."""
    ok = [p for p in pts if math.isfinite(_f(p["reward_mean"]))]
    return max(ok, key=lambda p: (_f(p["reward_mean"]), -_f(p["kl"])), default=None)


def best_at_kl(points: list[dict], bounds=(2, 5, 10)) -> dict:
    """bound -> {"by_method": {method: best point with kl ≤ bound, or None}, "winner": point or None}.
    A NaN KL is never ≤ a bound, so such a point is left out."""
    methods = sorted({p["method"] for p in points}, key=_method_key)
    out = {}
    for b in bounds:
        by_method = {m: _best([p for p in points if p["method"] == m and _f(p["kl"]) <= b]) for m in methods}
        out[b] = {"by_method": by_method, "winner": _best([p for p in by_method.values() if p is not None])}
    return out


def _overlap(a: dict, b: dict) -> bool | None:
    """Do the two 95% CIs overlap? None when either is undefined (NaN)."""
    (alo, ahi), (blo, bhi) = _ci_pair(a), _ci_pair(b)
    if any(math.isnan(v) for v in (alo, ahi, blo, bhi)):
        return None
    return not (alo > bhi or blo > ahi)


def _describe(p: dict) -> str:
    return (f"{p['method']} ({p['setting']}, step {p['step']}): {_num(_f(p['reward_mean']))} "
            f"{_ci(_ci_pair(p))} at KL {_num(_f(p['kl']), 1)}")


def _bound_sentence(b, entry: dict) -> str:
    winner, by_method = entry["winner"], entry["by_method"]
    absent = [m for m, p in by_method.items() if p is None]
    tail = f" No point with a defined reward at KL ≤ {b}: {', '.join(absent)}." if absent else ""
    if winner is None:
        return f"At KL ≤ {b} nats no method has a point." + tail
    head = f"At KL ≤ {b} nats the most ground-truth reward comes from {_describe(winner)}"
    runner = _best([p for m, p in by_method.items() if p is not None and m != winner["method"]])
    if runner is None:
        return head + "; no other method has a point there." + tail
    verdict = {True: "the 95% CIs overlap, so the two are not distinguishable",
               False: "the 95% CIs do not overlap",
               None: "a 95% CI is undefined, so the two cannot be compared"}[_overlap(winner, runner)]
    return f"{head}; runner-up {_describe(runner)}; {verdict}." + tail


def wall_time_by_method(points: list[dict]) -> dict[str, float]:
    """Seconds per method: each run's longest elapsed_s (its last point), summed over runs.
    Best-of-N: the points of all N share one sampling pass, so it is counted once."""
    runs: dict = {}
    for p in points:
        e = _f(p["elapsed_s"])
        if math.isfinite(e):
            key = (p["method"], "" if _is_bon(p["method"]) else p["setting"])
            runs[key] = max(runs.get(key, e), e)
    out: dict[str, float] = {}
    for (method, _), e in runs.items():
        out[method] = out.get(method, 0.0) + e
    return dict(sorted(out.items(), key=lambda kv: _method_key(kv[0])))


def frontier_summary_lines(points: list[dict], bounds=(2, 5, 10)) -> list[str]:
    """Plain sentences: per KL bound the best method, its reward [95% CI] and KL, and whether it is
    distinguishable from the runner-up (best point of any other method); then wall time."""
    lines = [_bound_sentence(b, e) for b, e in best_at_kl(points, bounds).items()]
    if any(_is_bon(p["method"]) for p in points):
        lines.append("Best-of-N KL is the analytic upper bound log N − (N−1)/N, not a sampled estimate.")
    walls = wall_time_by_method(points)
    if walls:
        lines.append("Wall time per method (the longest elapsed of each run, summed over runs; the shared "
                     "sampling of Best-of-N counted once): " + ", ".join(f"{m} {_num(s / 60, 1)} min" for m, s in walls.items()) + ".")
    return lines


def _win(x) -> str:
    x = _f(x)
    return "n/a" if math.isnan(x) else f"{100 * x:.0f}%"


def frontier_section_md(points: list[dict], bounds=(2, 5, 10), heading: str = "## Reward–KL frontier") -> str:
    """The summary sentences, then one table row per point, sorted by method then KL."""
    lines = [heading, ""] + [f"- {_md_cell(s)}" for s in frontier_summary_lines(points, bounds)] + [""]
    lines += ["| method | setting | step | KL | reward [95% CI] | win rate | n | elapsed |",
              "|---|---|---|---|---|---|---|---|"]
    for p in sorted(points, key=lambda p: (_method_key(p["method"]), _kl_key(p))):
        cells = [p["method"], p["setting"], p["step"], _num(_f(p["kl"])),
                 f"{_num(_f(p['reward_mean']))} {_ci(_ci_pair(p))}", _win(p["win_rate"]), p["n"],
                 f"{_num(_f(p['elapsed_s']) / 60, 1)} min"]
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ over-optimisation


def _zscore(ys: list[float]) -> list[float]:
    mean = sum(ys) / len(ys)
    sd = math.sqrt(sum((y - mean) ** 2 for y in ys) / len(ys))
    return [(y - mean) / sd if sd > 0 else 0.0 for y in ys]


def plot_reward_model_overoptimisation(metrics_rows: list[dict], out_png) -> Path:
    """`reward/model` and `reward/ground_truth` of a PPO run's train rows vs round, each z-scored
    over the run. Normalised rather than on two y axes: two independently autoscaled axes can make
    any two rising curves look alike, while z-scores put both on one scale, so the learned reward
    still climbing after the ground truth has flattened (reward hacking) is seen at a glance.
    The raw first → last values are in the legend."""
    fig, (ax,) = _figure(width=7.0, height=4.0)
    drawn = False
    for key, label, colour in [("reward/model", "learned reward (reward model)", "tab:red"),
                               ("reward/ground_truth", "ground truth (VADER)", "tab:blue")]:
        xs, ys = _series(metrics_rows, key, "train")
        if xs:
            ax.plot(xs, _zscore(ys), color=colour, marker="o", ms=3, lw=1.2,
                    label=f"{label}: raw {_num(ys[0])} → {_num(ys[-1])}")
            drawn = True
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no 'reward/model' or 'reward/ground_truth' in metrics", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("round")
    ax.set_ylabel("reward, z-scored over the run")
    ax.set_title("reward-model over-optimisation")
    ax.grid(alpha=0.3)
    return _save(fig, out_png)


# ------------------------------------------------------------------------------ all files


def stability_md(stability: dict | None) -> str:
    """The stability study as a markdown section: per method, each seed's final reward and KL,
    their spread, and how many runs collapsed."""
    if not stability:
        return ""
    lines = ["## Stability across training seeds", "",
             "| method | setting | seed | reward | KL | win rate | collapsed |", "|---|---|---|---|---|---|---|"]
    for method, s in stability.items():
        for r in s["runs"]:
            reward = "n/a" if r["reward_mean"] is None else f"{r['reward_mean']:.3f}"
            kl = "n/a" if r["kl"] is None else f"{r['kl']:.2f}"
            why = f"yes ({r['stopped']})" if r["stopped"] else ("yes" if r["collapsed"] else "no")
            lines.append(f"| {method} | {s['setting']} | {r['seed']} | {reward} | {kl} | {_win(r['win_rate'])} | {_md_cell(why)} |")
    lines.append("")
    for method, s in stability.items():
        if s["reward_mean"] and s["kl"]:
            lines.append(f"- {method} {s['setting']}: reward {s['reward_mean']['mean']:.3f} ± {s['reward_mean']['sd']:.3f} (sd; "
                         f"range {s['reward_mean']['min']:.3f}–{s['reward_mean']['max']:.3f}), KL {s['kl']['mean']:.2f} ± "
                         f"{s['kl']['sd']:.2f}; {s['collapsed']} of {len(s['runs'])} runs collapsed.")
    return "\n".join(lines) + "\n"


def write_frontier(out_dir, points: list[dict], *, title: str, extra: dict | None = None,
                   sections: tuple[str, ...] = ()) -> dict[str, Path]:
    """frontier.json ({"title", "extra", "points"}, NaN as null), frontier.csv, frontier.png and
    frontier.md (title, plot, summary, table, then `sections`) in `out_dir`. `extra`:
    JSON-serialisable run metadata (task, model, seeds) kept in the JSON as it is."""
    _check(points)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "frontier.json", "csv": out / "frontier.csv", "md": out / "frontier.md"}
    dump = lambda x: json.dumps(_jsonable(x), ensure_ascii=False, allow_nan=False)  # noqa: E731
    # One point per line: readable, and a diff or grep shows whole points.
    body = ",\n  ".join(dump(p) for p in points)
    text = f'{{"title": {dump(title)}, "extra": {dump(extra or {})}, "points": [\n  {body}\n]}}\n'
    paths["json"].write_text(text, encoding="utf-8")
    _write_csv(paths["csv"], points)
    paths["png"] = plot_frontier(points, out / "frontier.png", title)
    md = f"# {_md_cell(title)}\n\n![reward vs KL](frontier.png)\n\n" + frontier_section_md(points)
    md += "".join("\n" + section for section in sections if section)
    paths["md"].write_text(md, encoding="utf-8")
    return paths
