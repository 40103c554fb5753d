"""Preference-data audit: what a data set says about itself before any model sees it.

Pure Python over the validated `PreferencePair`s that `load_pairs` returns (no model, no
torch). Pairs are grouped by prompt; within a prompt each distinct response is a node and
each record an edge chosen → rejected ("chosen ≻ rejected"). The audit reports:

    duplicates       the same (prompt, chosen, rejected) in two or more records
    contradictions   A ≻ B in one record and B ≻ A in another: one finding per unordered
                     {A, B}, with how many records say each way
    cycles           a strongly connected component of the preference graph that holds a
                     cycle of three or more responses (A ≻ B ≻ C ≻ A): one finding per
                     component, with one example cycle. A component whose only cycles are
                     2-cycles (a lone contradiction, or a chain A ↔ B ↔ C) is not a cycle
                     group: those are already reported as contradictions
    summary          records, prompts, pairs per prompt, distinct responses (per prompt),
                     flagged prompts, chosen vs rejected length (a length-bias signal), votes

Identity is exact: prompts compare after the loader's normalisation (chat prompts by their
message lists; `records.prompt_key`, the rule the train/eval split uses too), responses by
their exact text (chat: the message list). `audit_pairs` / `audit_file` return one
JSON-ready dict (schema in `audit_pairs`); `format_report` renders that same dict as text,
so the two outputs never disagree. Both outputs survive text that is not valid Unicode (a
lone surrogate in a file name or in pairs built by hand): it is written escaped, `\\udcff`.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dpokit.data.normalize import load_pairs
from dpokit.data.preference_graph import find_cycle, strongly_connected_components
from dpokit.data.records import PreferencePair, part_key, prompt_key

DEFAULT_MAX_EXAMPLES = 5
PREVIEW_CHARS = 40

Part = str | list[dict]


# ---------------------------------------------------------------- identity and previews


def char_length(part: Part) -> int:
    """Characters of a completion; for chat, of all its message contents together."""
    return len(part) if isinstance(part, str) else sum(len(m["content"]) for m in part)


def preview(part: Part, limit: int = PREVIEW_CHARS) -> str:
    """One short line to recognise a prompt or response by. Chat shows its last message
    (for a prompt, the user's question: the most telling part)."""
    text = part if isinstance(part, str) else (part[-1]["content"] if part else "")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------- grouping


@dataclass
class PromptGroup:
    """All records of one prompt as a preference graph: responses are nodes (ids in
    first-seen order), each record adds its index to the edge (chosen, rejected)."""

    prompt: Part
    responses: list[Part] = field(default_factory=list)
    edges: dict[tuple[int, int], list[int]] = field(default_factory=dict)
    _ids: dict[str, int] = field(default_factory=dict, repr=False)

    def _node(self, part: Part) -> int:
        key = part_key(part)
        if key not in self._ids:
            self._ids[key] = len(self.responses)
            self.responses.append(part)
        return self._ids[key]

    def add(self, index: int, pair: PreferencePair) -> None:
        """Record `pair` (record number `index`) as the edge chosen → rejected."""
        edge = (self._node(pair.chosen), self._node(pair.rejected))
        self.edges.setdefault(edge, []).append(index)

    @property
    def records(self) -> int:
        return sum(len(idx) for idx in self.edges.values())

    def successors(self) -> dict[int, list[int]]:
        """Adjacency lists, each in the order the edges were first seen (deterministic)."""
        succ: dict[int, list[int]] = {n: [] for n in range(len(self.responses))}
        for u, v in self.edges:
            succ[u].append(v)
        return succ


def group_by_prompt(pairs: Sequence[PreferencePair]) -> list[PromptGroup]:
    """One `PromptGroup` per distinct prompt, in first-seen order."""
    groups: dict[tuple[str, str], PromptGroup] = {}
    for i, pair in enumerate(pairs):
        key = prompt_key(pair)
        if key not in groups:
            groups[key] = PromptGroup(prompt=pair.prompt)
        groups[key].add(i, pair)
    return list(groups.values())


# ---------------------------------------------------------------- findings


@dataclass
class Finding:
    """One thing the audit found in one prompt group. `records`: indices of every record
    involved, ascending; `edge`: (a, b) for a duplicate (the repeated edge) or a
    contradiction (a ≻ b said first); `cycle`: [n0, ..., n0] for a cycle group, whose
    `component` holds all its responses."""

    group: PromptGroup
    records: list[int]
    edge: tuple[int, int] | None = None
    component: list[int] | None = None
    cycle: list[int] | None = None


def find_duplicates(groups: Iterable[PromptGroup]) -> list[Finding]:
    """Edges said by two or more records: the same prompt, chosen and rejected."""
    found = [Finding(g, list(idx), edge=edge) for g in groups for edge, idx in g.edges.items() if len(idx) > 1]
    return sorted(found, key=lambda f: f.records[0])


def find_contradictions(groups: Iterable[PromptGroup]) -> list[Finding]:
    """Unordered response pairs said both ways; `edge` is the direction said first."""
    found = []
    for g in groups:
        for (a, b), idx in g.edges.items():
            back = g.edges.get((b, a))
            if back is not None and idx[0] < back[0]:  # each unordered pair once
                found.append(Finding(g, sorted(idx + back), edge=(a, b)))
    return sorted(found, key=lambda f: f.records[0])


def find_cycle_groups(groups: Iterable[PromptGroup]) -> list[Finding]:
    """Strongly connected components that hold a cycle of ≥ 3 responses (see `find_cycle`)."""
    found = []
    for g in groups:
        succ = g.successors()
        for comp in strongly_connected_components(range(len(g.responses)), succ):
            cycle = find_cycle(comp, g.edges, succ)
            if cycle is None:
                continue
            members = set(comp)
            idx = sorted(i for u in comp for v in succ[u] if v in members for i in g.edges[(u, v)])
            found.append(Finding(g, idx, component=sorted(comp), cycle=cycle))
    return sorted(found, key=lambda f: f.records[0])


# ---------------------------------------------------------------- summary statistics


def _pairs_per_prompt(groups: Sequence[PromptGroup]) -> dict:
    """min / median / max records per prompt (zeros for no records)."""
    counts = [g.records for g in groups] or [0]
    return {"min": min(counts), "median": float(statistics.median(counts)), "max": max(counts)}


def length_stats(pairs: Sequence[PreferencePair]) -> dict:
    """Chosen vs rejected length in characters. A chosen response that is longer far more
    often than half the time is a length bias a policy can learn instead of the preference."""
    n = len(pairs)
    chosen = [char_length(p.chosen) for p in pairs]
    rejected = [char_length(p.rejected) for p in pairs]
    longer = sum(c > r for c, r in zip(chosen, rejected))
    shorter = sum(c < r for c, r in zip(chosen, rejected))
    return {
        "chosen_mean": sum(chosen) / n if n else 0.0,
        "rejected_mean": sum(rejected) / n if n else 0.0,
        "chosen_longer": longer,
        "rejected_longer": shorter,
        "same_length": n - longer - shorter,
        "chosen_longer_share": longer / n if n else 0.0,
    }


def vote_stats(pairs: Sequence[PreferencePair]) -> dict:
    """Records with annotator votes, ties among them, and votes that favour the rejected
    response (the label disagrees with its own annotators)."""
    votes = [p.votes for p in pairs if p.votes is not None]
    out = {"records_with_votes": len(votes), "ties": sum(c == r for c, r in votes), "against_label": sum(c < r for c, r in votes)}
    raters = rater_stats(pairs)
    if raters:
        out["raters"] = raters
    return out


def rater_stats(pairs: Sequence[PreferencePair]) -> dict:
    """Per named rater: records rated, how often the rater prefers the labelled chosen response,
    and how often the rater sides with the record's majority (ties excluded); plus how many
    records with named raters are unanimous. Empty when no record names its raters."""
    rated = [p for p in pairs if p.raters]
    per: dict[str, dict] = {}
    for p in rated:
        c, r = p.votes
        for name, prefers in p.raters:
            d = per.setdefault(name, {"records": 0, "with_label": 0, "with_majority": 0, "decided": 0})
            d["records"] += 1
            d["with_label"] += prefers
            if c != r:
                d["decided"] += 1
                d["with_majority"] += prefers == (c > r)
    if not rated:
        return {}
    return {"records": len(rated), "unanimous": sum(len({v for _, v in p.raters}) == 1 for p in rated),
            "by_rater": dict(sorted(per.items()))}


def _summary(pairs: Sequence[PreferencePair], groups: Sequence[PromptGroup], findings: Mapping[str, list[Finding]], skipped: int) -> dict:
    def prompts_with(kind: str) -> set[int]:
        return {id(f.group) for f in findings[kind]}

    flagged = prompts_with("contradictions") | prompts_with("cycles")
    return {
        "records": len(pairs),
        "skipped": skipped,
        "prompts": len(groups),
        "pairs_per_prompt": _pairs_per_prompt(groups),
        "distinct_responses": sum(len(g.responses) for g in groups),
        "prompts_with_duplicates": len(prompts_with("duplicates")),
        "prompts_with_contradictions": len(prompts_with("contradictions")),
        "prompts_with_cycles": len(prompts_with("cycles")),
        "prompts_flagged": len(flagged),
        "flagged_share": len(flagged) / len(groups) if groups else 0.0,
        "length_chars": length_stats(pairs),
        "votes": vote_stats(pairs),
    }


# ---------------------------------------------------------------- JSON-ready examples


def _sources(pairs: Sequence[PreferencePair], indices: Iterable[int], limit: int) -> list[str]:
    """The "file:line" of the first `limit` records."""
    return [pairs[i].source for i in list(indices)[:limit]]


def _duplicate_example(f: Finding, pairs: Sequence[PreferencePair], limit: int) -> dict:
    (a, b), g = f.edge, f.group
    return {"prompt": preview(g.prompt), "chosen": preview(g.responses[a]), "rejected": preview(g.responses[b]),
            "records": len(f.records), "sources": _sources(pairs, f.records, limit)}


def _contradiction_example(f: Finding, pairs: Sequence[PreferencePair], limit: int) -> dict:
    a, b = f.edge
    said = {name: f.group.edges[edge] for name, edge in (("a_over_b", (a, b)), ("b_over_a", (b, a)))}
    return {
        "prompt": preview(f.group.prompt),
        "a": preview(f.group.responses[a]),
        "b": preview(f.group.responses[b]),
        **{name: {"records": len(idx), "sources": _sources(pairs, idx, limit)} for name, idx in said.items()},
    }


def _cycle_example(f: Finding, pairs: Sequence[PreferencePair], limit: int) -> dict:
    g = f.group
    steps = [
        {"chosen": preview(g.responses[u]), "rejected": preview(g.responses[v]), "source": pairs[g.edges[(u, v)][0]].source}
        for u, v in zip(f.cycle, f.cycle[1:])
    ]
    return {"prompt": preview(g.prompt), "responses": len(f.component), "records": len(f.records),
            "sources": _sources(pairs, f.records, limit), "cycle": steps}


# ---------------------------------------------------------------- the audit


def audit_pairs(pairs: Sequence[PreferencePair], *, max_examples: int = DEFAULT_MAX_EXAMPLES, path: str | None = None, skip_report: dict | None = None) -> dict:
    """Audit validated pairs. Returns a JSON-ready dict:

        path, max_examples
        summary         records, skipped, prompts, pairs_per_prompt {min, median, max},
                        distinct_responses, prompts_with_duplicates / _contradictions /
                        _cycles, prompts_flagged (contradiction or cycle), flagged_share,
                        length_chars {chosen_mean, rejected_mean, chosen_longer,
                        rejected_longer, same_length, chosen_longer_share},
                        votes {records_with_votes, ties, against_label}
        duplicates      {count (repeated pairs), redundant_records, examples: [{prompt,
                        chosen, rejected, records, sources}]}
        contradictions  {count, examples: [{prompt, a, b, a_over_b {records, sources},
                        b_over_a {records, sources}}]}   (a ≻ b is the direction said first)
        cycles          {count, examples: [{prompt, responses, records, sources,
                        cycle: [{chosen, rejected, source}, ...]}]}   (the steps close a loop)
        skipped         the loader's `SkipReport.to_dict()` ({} when not given)

    Counts are exact; `examples` holds the first `max_examples` findings in record order
    and each `sources` list at most `max_examples` "file:line" strings. Texts are previews
    (`preview`), for reading, not identity."""
    if max_examples < 0:
        raise ValueError(f"max_examples must be >= 0, got {max_examples}")
    groups = group_by_prompt(pairs)
    findings = {
        "duplicates": find_duplicates(groups),
        "contradictions": find_contradictions(groups),
        "cycles": find_cycle_groups(groups),
    }
    render = {"duplicates": _duplicate_example, "contradictions": _contradiction_example, "cycles": _cycle_example}
    sections = {
        kind: {"count": len(found), "examples": [render[kind](f, pairs, max_examples) for f in found[:max_examples]]}
        for kind, found in findings.items()
    }
    sections["duplicates"]["redundant_records"] = sum(len(f.records) - 1 for f in findings["duplicates"])
    skip_report = skip_report or {}
    return {
        "path": path,
        "max_examples": max_examples,
        "summary": _summary(pairs, groups, findings, skip_report.get("skipped_total", 0)),
        **sections,
        "skipped": skip_report,
    }


def audit_file(path: str | Path, *, split: str | None = None, max_examples: int = DEFAULT_MAX_EXAMPLES) -> dict:
    """Load `path` with the project's loader (malformed records raise `DataError` naming
    file:line:field; content skips are counted) and audit what it returns."""
    pairs, report = load_pairs(path, split=split)
    return audit_pairs(pairs, max_examples=max_examples, path=str(path), skip_report=report.to_dict())


def write_report(report: dict, out: str | Path) -> None:
    """The audit as indented JSON (UTF-8, previews unescaped)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # backslashreplace: a lone surrogate becomes the JSON escape that reads back as itself.
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8", errors="backslashreplace")


# ---------------------------------------------------------------- text report


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # quoted, with any odd characters escaped


def _srcs(sources: list[str], total: int) -> str:
    return ", ".join(sources) + (", …" if total > len(sources) else "")


def _summary_lines(report: dict) -> list[str]:
    """The summary in three to five lines: sizes, flagged prompts, length bias, votes, skips."""
    s = report["summary"]
    ppp, ln, v = s["pairs_per_prompt"], s["length_chars"], s["votes"]
    lines = [
        f"{report['path'] or 'pairs'}: {s['records']} records ({s['skipped']} skipped), {s['prompts']} prompts, {s['distinct_responses']} distinct "
        f"responses; pairs per prompt min {ppp['min']}, median {ppp['median']:g}, max {ppp['max']}",
        f"  flagged prompts: {s['prompts_flagged']} of {s['prompts']} ({s['flagged_share']:.1%}): "
        f"{s['prompts_with_contradictions']} with contradictions, {s['prompts_with_cycles']} with cycles",
        f"  length (chars): chosen mean {ln['chosen_mean']:.1f}, rejected mean {ln['rejected_mean']:.1f}; "
        f"chosen longer in {ln['chosen_longer']} of {s['records']} ({ln['chosen_longer_share']:.1%})",
    ]
    if v["records_with_votes"]:
        lines.append(f"  votes: {v['records_with_votes']} records with votes, {v['ties']} ties, {v['against_label']} against the label")
    if v.get("raters"):
        ra = v["raters"]
        each = "; ".join(f"{name} {d['records']} rated, with the label {d['with_label']}, with the majority "
                         f"{d['with_majority']} of {d['decided']}" for name, d in ra["by_rater"].items())
        lines.append(f"  named raters: {ra['records']} records, {ra['unanimous']} unanimous; {each}")
    for reason, d in (report.get("skipped") or {}).get("skipped", {}).items():
        lines.append(f"  skipped by the loader: {d['count']} {reason} (e.g. {', '.join(d['examples'])})")
    return lines


def _duplicate_line(ex: dict) -> str:
    return f"{_q(ex['prompt'])}: {_q(ex['chosen'])} ≻ {_q(ex['rejected'])} ×{ex['records']} ({_srcs(ex['sources'], ex['records'])})"


def _contradiction_line(ex: dict) -> str:
    a, b, ab, ba = _q(ex["a"]), _q(ex["b"]), ex["a_over_b"], ex["b_over_a"]
    return (
        f"{_q(ex['prompt'])}: {a} ≻ {b} in {ab['records']} ({_srcs(ab['sources'], ab['records'])}); "
        f"{b} ≻ {a} in {ba['records']} ({_srcs(ba['sources'], ba['records'])})"
    )


def _cycle_line(ex: dict) -> str:
    chain = " ≻ ".join(_q(step["chosen"]) for step in ex["cycle"]) + f" ≻ {_q(ex['cycle'][0]['chosen'])}"
    where = ", ".join(step["source"] for step in ex["cycle"])
    return f"{_q(ex['prompt'])}: {ex['responses']} responses, {ex['records']} records; e.g. {chain} ({where})"


def format_report(report: dict) -> str:
    """The audit dict (from `audit_pairs` / `audit_file`) as a readable text report."""
    lines = _summary_lines(report)
    sections = (
        ("duplicate pairs", "duplicates", _duplicate_line),
        ("contradictions", "contradictions", _contradiction_line),
        ("cycle groups", "cycles", _cycle_line),
    )
    for title, kind, line in sections:
        section = report[kind]
        extra = f" ({section['redundant_records']} redundant records)" if kind == "duplicates" and section["count"] else ""
        lines.append(f"{title}: {section['count']}{extra}")
        lines += ["  " + line(ex) for ex in section["examples"]]
        if section["count"] > len(section["examples"]):
            lines.append(f"  … and {section['count'] - len(section['examples'])} more (--max-examples)")
    return printable("\n".join(lines))


def printable(text: str) -> str:
    """`text` with lone surrogates escaped (`\\udcff`), so that printing it cannot fail."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
