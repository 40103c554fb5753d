"""Raw records -> validated `PreferencePair`s, or counted skips.

Accepted shapes (fields other than these are ignored; a field whose value is None/null is
treated as absent, because Parquet and `datasets` fill missing values with None):

    text            {"prompt": str, "chosen": str, "rejected": str}
    conversational  {"prompt": [messages], "chosen": [assistant messages] | str, "rejected": ...}
    implicit prompt {"chosen": [messages], "rejected": [messages]}: the prompt is their longest
                    common message prefix, which must end right before an assistant message
    Anthropic HH    {"chosen": "\\n\\nHuman: … \\n\\nAssistant: …", "rejected": "…"}: the prompt
                    is the longest common prefix ending at (and including) the last
                    "\\n\\nAssistant:" shared by both; the completions are the rest (they keep
                    their leading space, as BPE vocabularies expect " word" tokens)
    UltraFeedback   {"prompt": str, "chosen": [messages], "rejected": [messages], "score_chosen": x,
    (binarized)     "score_rejected": y}: full conversations, split as the implicit prompt; the
                    prompt must end with a user message whose text is `prompt` (surrounding
                    whitespace aside). Equal scores are a skip ("tied scores"); a chosen score
                    below the rejected one is a DataError. The scores are read only here.
    votes           optional: "votes": [for_chosen, for_rejected], or "chosen_votes" and
                    "rejected_votes" (non-negative integers, not both zero), or named raters
                    "votes": {"alice": "chosen", "bob": "rejected", ...} (each rater's choice
                    kept in `PreferencePair.raters`; the counts give the soft label)
    finished        optional: "chosen_finished", "rejected_finished" (true / false, default
                    true). false = the completion was cut off (e.g. at max_new_tokens) and did
                    not end by itself: it is tokenized without a closing EOS

A message is {"role": one of ROLES, "content": str}; keys with None values are dropped and
other keys are kept. Completions (chosen / rejected message lists) must start with an
assistant message. A string answer in a conversational record becomes one assistant message.

Structural problems raise `DataError` (file:line, field), among them text that is not
valid Unicode: a lone surrogate from a JSON escape such as "\\ud800" decodes to a Python str
that cannot be encoded, so it would break the tokenizer and any output that shows it. A
file with no records at all is a `DataError` too. Content problems are skips:

    empty completion                  chosen or rejected shows nothing: empty, whitespace,
                                      or invisible characters only (zero-width spaces and
                                      joiners, BOM, soft hyphen, other format/control chars)
    identical chosen and rejected     equal after dropping invisible characters and
                                      surrounding whitespace: a preference between them
                                      carries no signal
    empty prompt                      chat records with no prompt messages only. An empty
                                      TEXT prompt is kept: unconditional text is legitimate
                                      (tokenize gives it a start token).
"""

from __future__ import annotations

import random
import unicodedata
from numbers import Integral
from pathlib import Path

from dpokit.data.formats import read_records
from dpokit.data.records import DataError, PreferencePair, SkipPair, SkipReport, prompt_key

ROLES = ("system", "user", "assistant", "tool")
HH_ASSISTANT = "\n\nAssistant:"
# Characters that render as nothing and are not whitespace (str.strip handles that, the
# Zs/Zl/Zp separators included): control and format characters (U+200B-U+200D, U+2060,
# U+FEFF, soft hyphen, ...), and letters and symbols drawn blank (Hangul fillers, braille
# blank) or the combining grapheme joiner, which no category test catches.
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf"})
INVISIBLE_CHARS = frozenset("\u115f\u1160\u3164\uffa0\u2800\u034f")


def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


def _check_unicode(value: str, source: str, field: str) -> str:
    """`value`, or DataError when it holds a lone surrogate (not encodable as UTF-8)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = value[exc.start]
        raise DataError(source, "not valid Unicode: a lone surrogate", field, detail=f"\\u{ord(bad):04x} at character {exc.start}") from None
    return value


def _messages(value, source: str, field: str) -> list[dict]:
    """Validate a list of {role, content} messages; returns clean copies."""
    out = []
    for i, msg in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(msg, dict):
            raise DataError(source, f"expected a message object, got {_type_name(msg)}", where)
        role, content = msg.get("role"), msg.get("content")
        if role is None:
            raise DataError(source, "message has no 'role'", where)
        if content is None:
            raise DataError(source, "message has no 'content'", where)
        if role not in ROLES:
            raise DataError(source, f"unknown role {role!r}; expected one of {list(ROLES)}", where)
        if not isinstance(content, str):
            raise DataError(source, f"'content' must be a string, got {_type_name(content)}", where)
        for key, v in msg.items():  # other string keys (e.g. a name) may be rendered too
            if isinstance(v, str):
                _check_unicode(v, source, f"{where}.{key}")
        out.append({k: v for k, v in msg.items() if v is not None})
    return out


def _completion(value, source: str, field: str) -> list[dict]:
    """A chat completion: assistant message(s), or a string answer."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    if not isinstance(value, list):
        raise DataError(source, f"expected a string or a list of messages, got {_type_name(value)}", field)
    msgs = _messages(value, source, field)
    if msgs and msgs[0]["role"] != "assistant":
        raise DataError(source, f"the answer must start with an assistant message, got role {msgs[0]['role']!r}", field)
    return msgs


def _rater_votes(value: dict, source: str) -> tuple[tuple[str, bool], ...]:
    """{rater: "chosen" | "rejected"} -> ((rater, prefers chosen), ...) sorted by rater."""
    if not value:
        raise DataError(source, "no rater voted: no preference to learn", "votes")
    out = []
    for name, choice in value.items():
        if not name.strip():
            raise DataError(source, "a rater's name must not be empty", "votes")
        _check_unicode(name, source, "votes")
        if choice not in ("chosen", "rejected"):
            raise DataError(source, f"expected \"chosen\" or \"rejected\", got {choice!r}", f"votes.{name}")
        out.append((name, choice == "chosen"))
    return tuple(sorted(out))


def _raters(raw: dict, source: str) -> tuple[tuple[str, bool], ...] | None:
    return _rater_votes(raw["votes"], source) if isinstance(raw.get("votes"), dict) else None


def _votes(raw: dict, source: str) -> tuple[int, int] | None:
    if isinstance(raw.get("votes"), dict):
        raters = _rater_votes(raw["votes"], source)
        for_chosen = sum(prefers for _, prefers in raters)
        return for_chosen, len(raters) - for_chosen
    if raw.get("votes") is not None:
        v, field = raw["votes"], "votes"
        if not isinstance(v, (list, tuple)) or len(v) != 2:
            raise DataError(source, "expected [votes for chosen, votes for rejected] or {rater: \"chosen\" | \"rejected\"}", field)
    elif raw.get("chosen_votes") is not None or raw.get("rejected_votes") is not None:
        v, field = (raw.get("chosen_votes"), raw.get("rejected_votes")), "chosen_votes/rejected_votes"
    else:
        return None
    if not all(isinstance(x, Integral) and not isinstance(x, bool) and x >= 0 for x in v):
        raise DataError(source, "votes must be non-negative integers", field, detail=f"got {list(v)}")
    if v[0] + v[1] == 0:
        raise DataError(source, "votes are both zero: no preference to learn", field)
    return int(v[0]), int(v[1])


def _finished(raw: dict, source: str, field: str) -> bool:
    """An optional completion-finished flag; absent/None = True (the completion ended).
    Only real booleans pass: a string "false" would be truthy, and 0/1 may be a mix-up
    with votes or rewards."""
    value = raw.get(field)
    if value is None:
        return True
    if not isinstance(value, bool):
        raise DataError(source, f"expected true or false, got {_type_name(value)}", field)
    return value


def _hh_split(chosen: str, rejected: str, source: str) -> tuple[str, str, str]:
    """(prompt, chosen completion, rejected completion) of an Anthropic HH text record."""
    n = 0
    limit = min(len(chosen), len(rejected))
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    cut = chosen.rfind(HH_ASSISTANT, 0, n)  # the marker must lie wholly in the shared part
    if cut < 0:
        raise DataError(source, "missing, and chosen/rejected share no '\\n\\nAssistant:' prefix to infer it from", "prompt")
    end = cut + len(HH_ASSISTANT)
    return chosen[:end], chosen[end:], rejected[end:]


def _implicit_split(chosen: list[dict], rejected: list[dict], source: str) -> tuple[list, list, list]:
    """(prompt, chosen completion, rejected completion) of two full conversations."""
    if chosen == rejected:
        raise SkipPair("identical chosen and rejected")
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    if k == 0:
        raise DataError(source, "missing, and chosen/rejected conversations share no common prefix", "prompt")
    for name, conv in (("chosen", chosen), ("rejected", rejected)):
        if k < len(conv) and conv[k]["role"] != "assistant":
            raise DataError(
                source,
                f"conversations diverge at a {conv[k]['role']!r} message; the shared prompt must end right before an assistant message",
                name,
            )
    return chosen[:k], chosen[k:], rejected[k:]


def _score(raw: dict, field: str, source: str) -> float | None:
    value = raw.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float("-inf") < value < float("inf"):
        raise DataError(source, f"expected a number, got {_type_name(value)}", field)
    return float(value)


def _full_conversation(value) -> bool:
    """A message list that starts before the answer (UltraFeedback's chosen / rejected); a list
    starting with the assistant's message is an answer, judged by the text-prompt rule."""
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and value[0].get("role") != "assistant"


def _ultrafeedback_split(prompt: str, raw: dict, source: str) -> tuple[list, list, list]:
    """(prompt messages, chosen, rejected) of a binarized UltraFeedback record: text prompt,
    full conversations as chosen / rejected, optional score_chosen / score_rejected."""
    chosen = _messages(raw["chosen"], source, "chosen")
    rejected = _messages(raw["rejected"], source, "rejected")
    head, c, r = _implicit_split(chosen, rejected, source)
    if head[-1]["role"] != "user" or head[-1]["content"].strip() != prompt.strip():
        raise DataError(source, "the conversations' last prompt message is not the user turn given as 'prompt'", "prompt")
    sc, sr = _score(raw, "score_chosen", source), _score(raw, "score_rejected", source)
    if sc is not None and sr is not None:
        if sc == sr:
            raise SkipPair("tied scores (score_chosen = score_rejected)")
        if sc < sr:
            raise DataError(source, f"score_chosen {sc:g} is below score_rejected {sr:g}", "score_chosen")
    return head, c, r


def _parts(raw: dict, source: str) -> tuple:
    """(prompt, chosen, rejected) with the record's shape resolved; DataError if malformed."""
    for name in ("chosen", "rejected"):
        value = raw.get(name)
        if value is None:
            raise DataError(source, "missing", name)
        if not isinstance(value, (str, list)):
            raise DataError(source, f"expected a string or a list of messages, got {_type_name(value)}", name)
    for name in ("prompt", "chosen", "rejected"):
        if isinstance(raw.get(name), str):
            _check_unicode(raw[name], source, name)
    prompt, chosen, rejected = raw.get("prompt"), raw["chosen"], raw["rejected"]
    if prompt is None:  # implicit prompt: HH text or full conversations
        if isinstance(chosen, str) and isinstance(rejected, str):
            return _hh_split(chosen, rejected, source)
        if isinstance(chosen, list) and isinstance(rejected, list):
            return _implicit_split(_messages(chosen, source, "chosen"), _messages(rejected, source, "rejected"), source)
        raise DataError(source, "one of chosen/rejected is text and the other a list of messages", "rejected")
    if isinstance(prompt, str) and _full_conversation(chosen) and _full_conversation(rejected):
        return _ultrafeedback_split(prompt, raw, source)
    if isinstance(prompt, str):
        for name, value in (("chosen", chosen), ("rejected", rejected)):
            if not isinstance(value, str):
                raise DataError(source, "the prompt is text, so the answer must be text, not a list of messages", name)
        return prompt, chosen, rejected
    if isinstance(prompt, list):
        msgs = _messages(prompt, source, "prompt")
        if msgs and msgs[-1]["role"] == "assistant":
            raise DataError(source, "the last prompt message must not be the assistant's (that is the answer)", "prompt")
        return msgs, _completion(chosen, source, "chosen"), _completion(rejected, source, "rejected")
    raise DataError(source, f"expected a string or a list of messages, got {_type_name(prompt)}", "prompt")


def _invisible(ch: str) -> bool:
    return not ch.isspace() and (ch in INVISIBLE_CHARS or unicodedata.category(ch) in INVISIBLE_CATEGORIES)


def _visible_text(text: str) -> str:
    """What a reader sees of `text`: no invisible characters, no surrounding whitespace."""
    return "".join(ch for ch in text if not _invisible(ch)).strip()


def _is_empty(part) -> bool:
    if isinstance(part, str):
        return not _visible_text(part)
    return all(not _visible_text(m["content"]) for m in part)


def _visible(part):
    if isinstance(part, str):
        return _visible_text(part)
    return [{**m, "content": _visible_text(m["content"])} for m in part]


def normalize_record(raw, source: str) -> PreferencePair:
    """One raw record -> a `PreferencePair`. Raises `DataError` (structure) or `SkipPair`
    (content; reasons in the module docstring)."""
    if not isinstance(raw, dict):
        raise DataError(source, f"expected a JSON object, got {_type_name(raw)}")
    prompt, chosen, rejected = _parts(raw, source)
    votes = _votes(raw, source)
    finished = {f: _finished(raw, source, f) for f in ("chosen_finished", "rejected_finished")}
    if isinstance(prompt, list) and not prompt:
        raise SkipPair("empty prompt")
    if _is_empty(chosen) or _is_empty(rejected):
        raise SkipPair("empty completion")
    if _visible(chosen) == _visible(rejected):
        raise SkipPair("identical chosen and rejected")
    return PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected, source=source, votes=votes,
                          raters=_raters(raw, source), **finished)


def load_pairs(
    path: str | Path, *, split: str | None = None, on_malformed: str = "raise"
) -> tuple[list[PreferencePair], SkipReport]:
    """Read and validate a preference data set.

    on_malformed="raise" (default): the first malformed record raises `DataError`.
    on_malformed="skip": malformed records are counted as skips `malformed: <why>`.
    Content skips (empty completion, ...) are always counted, never raised. A file with no
    records at all (empty, or blank lines only) raises `DataError`: it is surely not the
    data set the caller meant. One whose records were all skipped returns no pairs and the
    counts, for the caller to judge (`records.require_pairs`; the audit shows them)."""
    return load_records(path, normalize_record, split=split, on_malformed=on_malformed)


def load_records(path: str | Path, normalize, *, split: str | None = None, on_malformed: str = "raise") -> tuple[list, SkipReport]:
    """Every record of `path` through `normalize(raw, source)` (pairs, KTO's labelled
    completions, RRHF's ranked responses), with `load_pairs`' contract: DataError or a counted
    `malformed:` skip, SkipPair counted, a file without records a DataError."""
    if on_malformed not in ("raise", "skip"):
        raise ValueError(f"on_malformed must be 'raise' or 'skip', got {on_malformed!r}")
    report = SkipReport()

    def count_malformed(err: DataError) -> None:
        report.add(f"malformed: {err.reason}", err.source)

    on_invalid = count_malformed if on_malformed == "skip" else None
    records = []
    for source, raw in read_records(path, split, on_invalid=on_invalid):
        try:
            records.append(normalize(raw, source))
        except SkipPair as skip:
            report.add(skip.reason, source)
        except DataError as err:
            if on_invalid is None:
                raise
            count_malformed(err)
    if not records and not report.total:
        raise DataError(Path(path).name, "holds no records")
    return records, report


def split_pairs(pairs: list[PreferencePair], eval_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic (train, eval) split, each in input order.

    Pairs that share a prompt go to the same side, so evaluation never scores a prompt the
    policy was trained on. Whole prompt groups, in a seeded random order, are moved to eval
    until it holds at least round(eval_fraction * len(pairs)) pairs (at least one when the
    fraction is > 0 and there are two or more prompt groups; never all of them)."""
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    groups: dict[tuple[str, str], list[int]] = {}
    for i, pair in enumerate(pairs):
        groups.setdefault(prompt_key(pair), []).append(i)
    keys = list(groups)  # first-seen order: deterministic, unlike set/hash order
    random.Random(seed).shuffle(keys)
    target = round(eval_fraction * len(pairs))
    if eval_fraction > 0 and len(keys) > 1:
        target = max(target, 1)
    eval_idx: set[int] = set()
    for key in keys[:-1]:  # the last group always stays in train
        if len(eval_idx) >= target:
            break
        eval_idx.update(groups[key])
    train = [p for i, p in enumerate(pairs) if i not in eval_idx]
    evals = [p for i, p in enumerate(pairs) if i in eval_idx]
    return train, evals
