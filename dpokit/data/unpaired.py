"""Unpaired labelled completions (KTO's data): raw records -> validated records -> the pairs
the trainer computes on.

A record is

    {"prompt": str | [messages], "completion": str | [assistant messages], "label": true | false}

with optional "completion_finished" (true / false, as for pairs). `label` true = desirable, false
= undesirable; only real booleans pass (a string "false" would be truthy, 0/1 may be a mix-up
with scores). Structural problems raise `DataError` naming file:line and field, content problems
are counted skips: an empty completion, an empty chat prompt. A text prompt with a chat
completion (or the other way round) is a DataError, and so is a file mixing text and chat
records: every record must pair with every other one (below).

KTO's reference point z0 is measured on *mismatched* pairs (x_i, y_j), j ≠ i (Ethayarajh et al.
2024, §4.1). `as_pairs` fixes each record's partner j(i) once, in a seeded order, and turns
record i into the pair (prompt_i, chosen = completion_i, rejected = completion_j(i)): the
prompt-sharing, packing and cached-reference machinery of the pairwise losses then yields
log π(y_i | x_i) and log π(y_j(i) | x_i), policy and reference, in one pass, and the mismatched
reference log-probs are cached with the rest. The partner is the next record in a seeded
permutation (dpokit.losses_unpaired.mismatched_partners), so no record is its own partner.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from dpokit.data.normalize import _check_unicode, _completion, _finished, _is_empty, _messages, _type_name, load_records
from dpokit.data.records import DataError, PreferencePair, SkipPair, SkipReport


@dataclass(frozen=True)
class LabelledCompletion:
    prompt: str | list[dict]
    completion: str | list[dict]
    desirable: bool
    source: str
    finished: bool = True

    @property
    def is_chat(self) -> bool:
        return isinstance(self.prompt, list)


def normalize_labelled(raw, source: str) -> LabelledCompletion:
    """One raw record -> a `LabelledCompletion`; DataError (structure) or SkipPair (content)."""
    if not isinstance(raw, dict):
        raise DataError(source, f"expected a JSON object, got {_type_name(raw)}")
    for name in ("prompt", "completion"):
        if raw.get(name) is None:
            raise DataError(source, "missing", name)
    label = raw.get("label")
    if not isinstance(label, bool):
        raise DataError(source, f"expected true (desirable) or false (undesirable), got {_type_name(label)}", "label")
    prompt, completion = raw["prompt"], raw["completion"]
    if isinstance(prompt, str):
        _check_unicode(prompt, source, "prompt")
        if not isinstance(completion, str):
            raise DataError(source, "the prompt is text, so the completion must be text, not a list of messages", "completion")
        _check_unicode(completion, source, "completion")
    elif isinstance(prompt, list):
        prompt = _messages(prompt, source, "prompt")
        if prompt and prompt[-1]["role"] == "assistant":
            raise DataError(source, "the last prompt message must not be the assistant's (that is the completion)", "prompt")
        completion = _completion(completion, source, "completion")
        if not prompt:
            raise SkipPair("empty prompt")
    else:
        raise DataError(source, f"expected a string or a list of messages, got {_type_name(prompt)}", "prompt")
    if _is_empty(completion):
        raise SkipPair("empty completion")
    return LabelledCompletion(prompt, completion, label, source, _finished(raw, source, "completion_finished"))


def load_labelled(path: str | Path, *, split: str | None = None, on_malformed: str = "raise") -> tuple[list[LabelledCompletion], SkipReport]:
    """Read and validate a file of labelled completions (same readers, same on_malformed
    contract and counted skips as `dpokit.data.normalize.load_pairs`)."""
    records, report = load_records(path, normalize_labelled, split=split, on_malformed=on_malformed)
    _require_one_kind(records)
    return records, report


def _require_one_kind(records: list[LabelledCompletion]) -> None:
    if not records:
        return
    first = records[0]
    for r in records:
        if r.is_chat != first.is_chat:
            kinds = ("chat messages", "text")
            raise DataError(r.source, f"{kinds[not r.is_chat]} record in a file whose first record ({first.source}) is "
                            f"{kinds[not first.is_chat]}: mismatched pairs need one kind throughout", "prompt")


def as_pairs(records: list[LabelledCompletion], seed: int) -> tuple[list[PreferencePair], list[bool]]:
    """(pairs, desirable): pair i = (prompt_i, completion_i, completion of i's partner), in the
    records' order; desirable[i] = record i's label. Needs at least 2 records."""
    from dpokit.losses_unpaired import mismatched_partners

    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    partner = {order[k]: order[j] for k, j in enumerate(mismatched_partners(len(order)))}
    pairs = [
        PreferencePair(prompt=r.prompt, chosen=r.completion, rejected=records[partner[i]].completion, source=r.source,
                       chosen_finished=r.finished, rejected_finished=records[partner[i]].finished)
        for i, r in enumerate(records)
    ]
    return pairs, [r.desirable for r in records]
