"""PreferencePair -> TokenizedPair: prompt ids, and each completion's ids ending with EOS once
(none for a completion the record marks unfinished).

Text pairs:
    prompt      tokenizer(prompt) WITH its special tokens (BOS if the tokenizer adds one).
                An empty prompt that encodes to nothing gets one start token (BOS, else EOS)
                so the first completion token is predicted from something and is scored.
    completion  tokenizer(text, add_special_tokens=False) + [EOS]; EOS is not doubled when
                the text already ends with the EOS token.
Chat pairs:
    prompt      template(prompt, add_generation_prompt=True), encoded without special tokens
                (templates write their own BOS).
    completion  template(prompt + answer) minus the templated prompt. The templated prompt
                must be a token-level prefix of the templated conversation, else DataError.
                Whatever follows the completion's final EOS (e.g. the template's newline
                after `<|im_end|>`) is cut; if it holds no EOS at all, EOS is appended.

Unfinished completions (`chosen_finished` / `rejected_finished` False: cut off, e.g. at
max_new_tokens): no EOS is appended, so the last real token is the last scored one. DPO
would otherwise learn "stop here" from chosen and "don't" from rejected completions at cut
points the model never chose. Text: tokenizer(text) as is; text that ends with the EOS token
contradicts the flag and is a DataError. Chat: the templated completion is cut before its
final EOS (the turn did not end); a template that writes no EOS leaves it as rendered.

Truncation (settings):
    1. prompt longer than max_prompt_length: keep its END (a leading BOS is kept too), or
       skip the pair with prompt_overflow="skip" (reason "prompt longer than max_prompt_length").
    2. each completion cut to keep its START so len(prompt) + len(completion) <= max_length;
       a cut completion has no EOS (it did not end). If not one completion token fits, the
       pair is skipped ("no room for the completion within max_length").
Truncations are counted in the report's separate truncation tally, never as skips.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from dpokit.data.collate import TokenizedPair
from dpokit.data.records import DataError, PreferencePair, SkipPair, SkipReport

PROMPT_OVERFLOW = ("truncate", "skip")

SKIP_PROMPT_TOO_LONG = "prompt longer than max_prompt_length"
SKIP_NO_ROOM = "no room for the completion within max_length"
TRUNC_PROMPT = "prompt: kept its end"
TRUNC_CHOSEN = "chosen: kept its start"
TRUNC_REJECTED = "rejected: kept its start"


@dataclass(frozen=True)
class TokenizeSettings:
    """Length limits, in tokens. `max_prompt_length` may equal `max_length` (then a prompt
    that fills it leaves no room and its pair is skipped)."""

    max_length: int = 512
    max_prompt_length: int = 256
    prompt_overflow: str = "truncate"

    def __post_init__(self):
        if self.max_length < 2 or self.max_prompt_length < 1:
            raise ValueError(f"need max_length >= 2 and max_prompt_length >= 1, got {self}")
        if self.max_prompt_length > self.max_length:
            raise ValueError(f"max_prompt_length ({self.max_prompt_length}) exceeds max_length ({self.max_length})")
        if self.prompt_overflow not in PROMPT_OVERFLOW:
            raise ValueError(f"prompt_overflow must be one of {PROMPT_OVERFLOW}, got {self.prompt_overflow!r}")

    def to_dict(self) -> dict:
        """Plain dict, stable key order: part of the reference-cache key."""
        return asdict(self)


def _eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; completions need one to end")
    return int(tokenizer.eos_token_id)


def _encode(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _finished(pair: PreferencePair, field: str) -> bool:
    """Whether completion `field` ("chosen" / "rejected") ended by itself."""
    return getattr(pair, f"{field}_finished")


def _text_completion(tokenizer, pair: PreferencePair, field: str, eos: int) -> list[int]:
    ids = _encode(tokenizer, getattr(pair, field), special=False)
    ends_with_eos = bool(ids) and ids[-1] == eos
    if _finished(pair, field):
        return ids if ends_with_eos else ids + [eos]
    if ends_with_eos:
        # Keeping it would train the very stop the flag says never happened; dropping it
        # would silently rewrite the user's text. Ask instead.
        raise DataError(pair.source, f"marked unfinished ({field}_finished: false) but the text ends with the EOS token", field)
    return ids


def encode_text(pair: PreferencePair, tokenizer) -> tuple[list[int], list[int], list[int]]:
    """Untruncated (prompt, chosen, rejected) ids of a text pair."""
    eos = _eos_id(tokenizer)
    prompt = _encode(tokenizer, pair.prompt, special=True)
    if not prompt:
        bos = tokenizer.bos_token_id
        prompt = [int(bos) if bos is not None else eos]
    chosen = _text_completion(tokenizer, pair, "chosen", eos)
    return prompt, chosen, _text_completion(tokenizer, pair, "rejected", eos)


def _templated(tokenizer, messages: list[dict], generation_prompt: bool) -> list[int]:
    # tokenize=False then encode: in transformers 5, tokenize=True returns a dict, and the
    # template writes its own BOS, so no special tokens are added on top.
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return _encode(tokenizer, text, special=False)


def _chat_completion(tokenizer, pair: PreferencePair, prompt_ids: list[int], field: str, eos: int) -> list[int]:
    full = _templated(tokenizer, pair.prompt + getattr(pair, field), generation_prompt=False)
    if full[: len(prompt_ids)] != prompt_ids:
        raise DataError(
            pair.source,
            "the chat template renders the prompt differently inside the full conversation "
            "(templated prompt with add_generation_prompt=True is not a token prefix of it)",
            field,
        )
    completion = full[len(prompt_ids) :]
    finished = _finished(pair, field)
    if eos not in completion:
        return completion + [eos] if finished else completion
    last = len(completion) - 1 - completion[::-1].index(eos)
    # Finished: up to and including the turn's EOS. Unfinished: the turn did not end, so
    # stop before the EOS the template wrote for it.
    return completion[: last + 1] if finished else completion[:last]


def encode_chat(pair: PreferencePair, tokenizer) -> tuple[list[int], list[int], list[int]]:
    """Untruncated (prompt, chosen, rejected) ids of a chat pair."""
    eos = _eos_id(tokenizer)
    prompt = _templated(tokenizer, pair.prompt, generation_prompt=True)
    chosen = _chat_completion(tokenizer, pair, prompt, "chosen", eos)
    rejected = _chat_completion(tokenizer, pair, prompt, "rejected", eos)
    return prompt, chosen, rejected


def truncate_ids(
    prompt: list[int], chosen: list[int], rejected: list[int], settings: TokenizeSettings, bos_id: int | None = None
) -> tuple[list[int], list[int], list[int], list[str]]:
    """Apply the truncation policy (module docstring). Returns the three id lists and the
    truncation reasons that applied; raises SkipPair when the pair cannot be kept."""
    events = []
    limit = settings.max_prompt_length
    if len(prompt) > limit:
        if settings.prompt_overflow == "skip":
            raise SkipPair(SKIP_PROMPT_TOO_LONG)
        # Keep the end (the question just before the answer); keep BOS first if it led,
        # since models never see text without it in training.
        if bos_id is not None and prompt[0] == bos_id and limit >= 2:
            prompt = [prompt[0]] + prompt[len(prompt) - (limit - 1) :]
        else:
            prompt = prompt[len(prompt) - limit :]
        events.append(TRUNC_PROMPT)
    room = settings.max_length - len(prompt)
    if room < 1:
        raise SkipPair(SKIP_NO_ROOM)
    if len(chosen) > room:
        chosen = chosen[:room]
        events.append(TRUNC_CHOSEN)
    if len(rejected) > room:
        rejected = rejected[:room]
        events.append(TRUNC_REJECTED)
    return prompt, chosen, rejected, events


def tokenize_pair(
    pair: PreferencePair, tokenizer, settings: TokenizeSettings, index: int, report: SkipReport | None = None
) -> TokenizedPair:
    """One pair -> TokenizedPair(index=index). Raises SkipPair (pair dropped) or DataError
    (chat template mismatch); truncations are added to `report` when one is given."""
    encode = encode_chat if pair.is_chat else encode_text
    prompt, chosen, rejected = encode(pair, tokenizer)
    bos = tokenizer.bos_token_id
    prompt, chosen, rejected, events = truncate_ids(prompt, chosen, rejected, settings, bos)
    if report is not None:
        for reason in events:
            report.add_truncation(reason, pair.source)
    return TokenizedPair(prompt_ids=prompt, chosen_ids=chosen, rejected_ids=rejected, index=index)


def tokenize_pairs(
    pairs: list[PreferencePair], tokenizer, settings: TokenizeSettings
) -> tuple[list[TokenizedPair], SkipReport]:
    """Tokenize a data set. `index` = position in `pairs`; skipped pairs leave gaps."""
    report = SkipReport()
    out = []
    for i, pair in enumerate(pairs):
        try:
            out.append(tokenize_pair(pair, tokenizer, settings, i, report))
        except SkipPair as skip:
            report.add(skip.reason, pair.source)
    return out, report
