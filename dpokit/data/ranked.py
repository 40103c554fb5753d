"""Ranked responses (RRHF's data): raw records -> validated records -> token ids.

A record is

    {"prompt": str | [messages], "responses": [str | [assistant messages], ...], "scores": [number, ...]}

with K ≥ 2 responses and one finite score per response (higher = better; equal scores are ties,
which RRHF leaves unranked). Structural problems raise `DataError` naming file:line and field
(`responses[2]`, `scores`); content problems are counted skips: an empty response, all
responses identical, an empty chat prompt. Every response of a record is tokenized exactly as a
pair's completion would be (same chat template, EOS and truncation rules: dpokit.data.tokenize).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

from dpokit.data.normalize import _check_unicode, _completion, _is_empty, _messages, _type_name, _visible, load_records
from dpokit.data.records import DataError, PreferencePair, SkipPair, SkipReport


@dataclass(frozen=True)
class RankedResponses:
    prompt: str | list[dict]
    responses: tuple
    scores: tuple[float, ...]
    source: str

    @property
    def is_chat(self) -> bool:
        return isinstance(self.prompt, list)


@dataclass(frozen=True)
class TokenizedRanked:
    prompt_ids: list[int]
    response_ids: tuple[list[int], ...]
    scores: tuple[float, ...]
    index: int


def _scores(raw: dict, k: int, source: str) -> tuple[float, ...]:
    scores = raw.get("scores")
    if not isinstance(scores, list):
        raise DataError(source, f"expected a list of numbers, got {_type_name(scores)}", "scores")
    if len(scores) != k:
        raise DataError(source, f"{len(scores)} scores for {k} responses: one score per response", "scores")
    for i, s in enumerate(scores):
        if isinstance(s, bool) or not isinstance(s, Real) or not math.isfinite(s):
            raise DataError(source, f"expected a finite number, got {s!r}", f"scores[{i}]")
    return tuple(float(s) for s in scores)


def normalize_ranked(raw, source: str) -> RankedResponses:
    """One raw record -> RankedResponses; DataError (structure) or SkipPair (content)."""
    if not isinstance(raw, dict):
        raise DataError(source, f"expected a JSON object, got {_type_name(raw)}")
    prompt, responses = raw.get("prompt"), raw.get("responses")
    if prompt is None:
        raise DataError(source, "missing", "prompt")
    if not isinstance(responses, list) or len(responses) < 2:
        raise DataError(source, "expected a list of at least 2 responses", "responses")
    if isinstance(prompt, str):
        _check_unicode(prompt, source, "prompt")
        for i, r in enumerate(responses):
            if not isinstance(r, str):
                raise DataError(source, f"the prompt is text, so each response must be text, got {_type_name(r)}", f"responses[{i}]")
            _check_unicode(r, source, f"responses[{i}]")
    elif isinstance(prompt, list):
        prompt = _messages(prompt, source, "prompt")
        responses = [_completion(r, source, f"responses[{i}]") for i, r in enumerate(responses)]
        if not prompt:
            raise SkipPair("empty prompt")
    else:
        raise DataError(source, f"expected a string or a list of messages, got {_type_name(prompt)}", "prompt")
    scores = _scores(raw, len(responses), source)
    if any(_is_empty(r) for r in responses):
        raise SkipPair("empty response")
    if all(_visible(r) == _visible(responses[0]) for r in responses):
        raise SkipPair("all responses identical")
    return RankedResponses(prompt, tuple(responses), scores, source)


def load_ranked(path: str | Path, *, split: str | None = None, on_malformed: str = "raise") -> tuple[list[RankedResponses], SkipReport]:
    """Read and validate a file of ranked responses (the on_malformed contract and counted
    skips of `dpokit.data.normalize.load_pairs`)."""
    return load_records(path, normalize_ranked, split=split, on_malformed=on_malformed)


def tokenize_ranked(records: list[RankedResponses], tokenizer, settings) -> tuple[list[TokenizedRanked], SkipReport]:
    """Token ids of every record (index = position in `records`). Each response is tokenized
    as the chosen completion of a pair with a different response of the record, so prompt
    templating, EOS and truncation are exactly those of pairs; a record any of whose responses
    cannot be kept is skipped with the pair's reason."""
    from dpokit.data.tokenize import tokenize_pair

    report, out = SkipReport(), []
    for i, rec in enumerate(records):
        try:
            ids, prompt_ids = [], None
            for k, response in enumerate(rec.responses):
                other = next(r for r in rec.responses if _visible(r) != _visible(response))
                pair = PreferencePair(prompt=rec.prompt, chosen=response, rejected=other, source=rec.source)
                tokenized = tokenize_pair(pair, tokenizer, settings, i, report if k == 0 else None)
                prompt_ids = tokenized.prompt_ids
                ids.append(tokenized.chosen_ids)
            out.append(TokenizedRanked(prompt_ids, tuple(ids), rec.scores, i))
        except SkipPair as skip:
            report.add(skip.reason, rec.source)
    return out, report
