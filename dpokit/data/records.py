"""The validated preference record, the error for malformed input, and the skip report.

Every reader and normaliser speaks in terms of a `source` string that names where a record
came from, so a message can point a user at the exact place to fix:

    pairs.jsonl:12            line 12 of a JSON Lines file (lines count from 1)
    pairs.json:item 3         element 3 of a JSON array (0-based, as `data[3]`)
    pairs.parquet:row 3       row 3 of a Parquet file (0-based, as `table[3]`)
    hh[train]:row 3           row 3 of split `train` of a `datasets` directory `hh`
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

# How many example sources a report keeps per reason: enough to find the records, short
# enough to print.
MAX_EXAMPLES = 3


@dataclass(frozen=True)
class PreferencePair:
    """One validated preference pair.

    Either all three parts are text (`str`), or all three are chat messages
    (`list[dict]` with `role` and `content`): then `prompt` holds the messages before the
    answer and `chosen` / `rejected` the answer message(s), each starting with an assistant
    message. `votes` = (votes for chosen, votes for rejected) when the record had them.

    `chosen_finished` / `rejected_finished`: False when that completion was cut off (e.g.
    sampled up to max_new_tokens without reaching EOS). Tokenization then appends no EOS,
    so training never rewards or punishes "stopping" at a cut the model did not choose.
    """

    prompt: str | list[dict]
    chosen: str | list[dict]
    rejected: str | list[dict]
    source: str
    votes: tuple[int, int] | None = None
    chosen_finished: bool = True
    rejected_finished: bool = True
    # Named raters' choices, ((rater, prefers chosen), ...) sorted by rater, when the record
    # had {"votes": {rater: "chosen" | "rejected"}}: disagreement kept as data (`votes` holds
    # the counts).
    raters: tuple[tuple[str, bool], ...] | None = None

    @property
    def is_chat(self) -> bool:
        """True for chat-message pairs (the chat template is applied when tokenizing)."""
        return isinstance(self.prompt, list)


def prompt_key(pair: PreferencePair) -> tuple[str, str]:
    """The identity of a pair's prompt: one rule for the train/eval split (pairs of a prompt
    stay on one side) and the audit (pairs grouped by prompt). The kind tag keeps a text
    prompt that happens to look like JSON from colliding with a chat prompt's serialised
    message list."""
    return ("chat", part_key(pair.prompt)) if pair.is_chat else ("text", pair.prompt)


def part_key(part: str | list[dict]) -> str:
    """Exact identity of a text or chat part. sort_keys: message dicts compare by content,
    not by the order their keys were written in (as Python's list equality does)."""
    return part if isinstance(part, str) else json.dumps(part, sort_keys=True, ensure_ascii=False)


def one_line(text: str) -> str:
    """`text` with its line breaks turned into spaces: an error message is one line, even
    when a library's message or a file name holds a newline."""
    return " ".join(text.splitlines())


class DataError(ValueError):
    """A malformed record or file. The message names the place and the field:

        pairs.jsonl:12: field 'chosen': expected a string or a list of messages, got int

    `reason` is the part after the source without `detail` (values that vary from record
    to record): with `on_malformed="skip"` it is the counted skip reason, so that records
    broken the same way are counted together. The message is always one line."""

    def __init__(self, source: str, reason: str, field: str | None = None, detail: str | None = None):
        self.source = source
        self.field = field
        self.reason = f"field '{field}': {reason}" if field else reason
        super().__init__(one_line(f"{source}: {self.reason}" + (f" ({detail})" if detail else "")))


class SkipPair(Exception):
    """Raised by per-record steps (normalise, tokenize) when a record is dropped on purpose;
    the caller counts it in a `SkipReport` under `reason`."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


@dataclass
class _Tally:
    """Counts per reason plus the first few sources of each."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, source: str, n: int = 1) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + n
        kept = self.examples.setdefault(reason, [])
        if len(kept) < MAX_EXAMPLES and source not in kept:
            kept.append(source)

    def merge(self, other: "_Tally") -> None:
        for reason, n in other.counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + n
            kept = self.examples.setdefault(reason, [])
            for src in other.examples.get(reason, []):
                if len(kept) < MAX_EXAMPLES and src not in kept:
                    kept.append(src)

    def to_dict(self) -> dict:
        return {r: {"count": n, "examples": list(self.examples.get(r, []))} for r, n in sorted(self.counts.items())}

    def lines(self) -> list[str]:
        out = []
        for reason, n in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0])):
            out.append(f"  {n:6d}  {reason}  (e.g. {', '.join(self.examples.get(reason, []))})")
        return out


@dataclass
class SkipReport:
    """What happened to records on their way to batches, in two separate tallies:

    * skips (`add`): the record was DROPPED; `total` and `counts` cover these only.
    * truncations (`add_truncation`): the record was KEPT but shortened; they never count
      toward `total`. Reasons look like `prompt: kept its end`, `chosen: kept its start`.
    """

    skipped: _Tally = field(default_factory=_Tally)
    truncated: _Tally = field(default_factory=_Tally)

    def add(self, reason: str, source: str) -> None:
        """Count one dropped record."""
        self.skipped.add(reason, source)

    def add_truncation(self, reason: str, source: str) -> None:
        """Count one kept-but-shortened part of a record."""
        self.truncated.add(reason, source)

    @property
    def counts(self) -> dict[str, int]:
        """Skips per reason (truncations not included)."""
        return dict(self.skipped.counts)

    @property
    def truncations(self) -> dict[str, int]:
        """Truncations per reason."""
        return dict(self.truncated.counts)

    @property
    def total(self) -> int:
        """Number of dropped records."""
        return sum(self.skipped.counts.values())

    def examples(self, reason: str) -> list[str]:
        """Up to MAX_EXAMPLES sources of records skipped or truncated for `reason`."""
        return list(self.skipped.examples.get(reason) or self.truncated.examples.get(reason, []))

    def merge(self, other: "SkipReport") -> "SkipReport":
        """Add `other`'s counts into this report (in place); returns self for chaining."""
        self.skipped.merge(other.skipped)
        self.truncated.merge(other.truncated)
        return self

    def to_dict(self) -> dict:
        """JSON-ready: {"skipped_total", "skipped": {reason: {count, examples}}, "truncated": {...}}."""
        return {"skipped_total": self.total, "skipped": self.skipped.to_dict(), "truncated": self.truncated.to_dict()}

    def counts_line(self) -> str:
        """One line with both totals, zeros included, e.g. `2 skipped (2 empty completion),
        0 truncated`; truncations count shortened parts, as in `format`."""
        n_trunc = sum(self.truncated.counts.values())
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.counts.items()))
        return f"{self.total} skipped" + (f" ({why})" if why else "") + f", {n_trunc} truncated"

    def format(self) -> str:
        """A human summary, e.g. for the console at the start of a run."""
        if not self.skipped.counts and not self.truncated.counts:
            return "no records skipped or truncated"
        parts = []
        if self.skipped.counts:
            parts += [f"skipped {self.total} record(s):"] + self.skipped.lines()
        if self.truncated.counts:
            n = sum(self.truncated.counts.values())
            parts += [f"truncated {n} part(s) of kept records:"] + self.truncated.lines()
        return "\n".join(parts)


def require_pairs(count: int, name: str, report: SkipReport) -> None:
    """DataError naming `name` and the skip counts when no pair is left to use: a run, or a
    score, over nothing would only hide that every record was dropped."""
    if count == 0:
        raise DataError(name, "no usable pairs", detail=report.counts_line())
