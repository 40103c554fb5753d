"""PreferencePair -> TokenizedPair: prompt ids, and each completion's ids ending with EOS once
(none for a completion the record marks unfinished).

Special-token text is refused, never encoded: a prompt, completion or chat message (any
string field) that contains a special token's text (`<|im_end|>`, `<|im_start|>user`,
`<|endoftext|>`, every added token the tokenizer marks special) skips its pair, counted as
"field 'chosen': holds special-token text '<|im_end|>'". Encoded, such text would become the
real control token: a user message could close its turn and open a system one (prompt
injection into the chat format), and a completion ending in `<|im_end|>` would end twice
(double EOS). Encoding it as plain characters instead would quietly train the model to
write markup. Refusing is also what makes the simple encoding below safe: content holds no
special-token text, so special tokens arise only where the chat template (or the
tokenizer's BOS) writes them. (One could straddle content and markup only if a special
token's text began in content and ended in the template's text; ChatML markup around
content is whole special tokens and newlines, and the tests check that a fragment such as
`<|im_` beside it stays plain text, for the tiny and the SmolLM2 tokenizers.)

Text pairs:
    prompt      tokenizer(prompt) WITH its special tokens (BOS if the tokenizer adds one).
                An empty prompt that encodes to nothing gets one start token (BOS, else EOS)
                so the first completion token is predicted from something and is scored.
    completion  tokenizer(text, add_special_tokens=False) + [EOS].
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
points the model never chose. Text: tokenizer(text) as is. Chat: the templated completion
is cut before its final EOS (the turn did not end); a template that writes no EOS leaves it
as rendered.

Truncation (settings):
    1. prompt longer than max_prompt_length: keep its END (a leading BOS is kept too), or
       skip the pair with prompt_overflow="skip" (reason "prompt longer than max_prompt_length").
    2. each completion cut to keep its START so len(prompt) + len(completion) <= max_length;
       a cut completion has no EOS (it did not end). If not one completion token fits, the
       pair is skipped ("no room for the completion within max_length").
Truncations are counted in the report's separate truncation tally, never as skips. A pair
whose chosen and rejected ids are equal carries no signal and is skipped: "identical after
truncation" when both were cut to the same start, "identical after tokenization" when the
tokenizer maps two different texts to the same ids.
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
SKIP_IDENTICAL_TRUNCATED = "identical after truncation"
SKIP_IDENTICAL_TOKENS = "identical after tokenization"


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


def special_texts(tokenizer) -> list[str]:
    """The text of every special token: the named ones (EOS, BOS, pad, ...) and each added
    token marked special (SmolLM2 has `<filename>`, `<jupyter_code>`, ... besides chat markup)."""
    added = (t.content for t in tokenizer.added_tokens_decoder.values() if t.special)
    return sorted(t for t in set(tokenizer.all_special_tokens) | set(added) if t)


def _strings(part, field: str):
    """(field name, string) of every string a part holds (chat: each message's values)."""
    if isinstance(part, str):
        yield field, part
        return
    for i, msg in enumerate(part):
        for key, value in msg.items():
            if isinstance(value, str):
                yield f"{field}[{i}].{key}", value


def refuse_special_text(pair: PreferencePair, tokenizer) -> None:
    """SkipPair when any string of `pair` holds special-token text (module docstring)."""
    specials = special_texts(tokenizer)
    for name in ("prompt", "chosen", "rejected"):
        for field, text in _strings(getattr(pair, name), name):
            for token in specials:
                if token in text:
                    raise SkipPair(f"field '{field}': holds special-token text {token!r}")


def _finished(pair: PreferencePair, field: str) -> bool:
    """Whether completion `field` ("chosen" / "rejected") ended by itself."""
    return getattr(pair, f"{field}_finished")


def _text_completion(tokenizer, pair: PreferencePair, field: str, eos: int) -> list[int]:
    ids = _encode(tokenizer, getattr(pair, field), special=False)
    return ids + [eos] if _finished(pair, field) else ids


def encode_text(pair: PreferencePair, tokenizer) -> tuple[list[int], list[int], list[int]]:
    """Untruncated (prompt, chosen, rejected) ids of a text pair; SkipPair for special-token text."""
    refuse_special_text(pair, tokenizer)
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
    """Untruncated (prompt, chosen, rejected) ids of a chat pair; SkipPair for special-token text."""
    refuse_special_text(pair, tokenizer)
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
    """One pair -> TokenizedPair(index=index). Raises SkipPair (pair dropped: special-token
    text, no room, identical ids) or DataError (chat template mismatch); truncations of a
    kept pair are added to `report` when one is given."""
    encode = encode_chat if pair.is_chat else encode_text
    prompt, chosen, rejected = encode(pair, tokenizer)
    bos = tokenizer.bos_token_id
    prompt, chosen, rejected, events = truncate_ids(prompt, chosen, rejected, settings, bos)
    if chosen == rejected:
        cut = TRUNC_CHOSEN in events or TRUNC_REJECTED in events
        raise SkipPair(SKIP_IDENTICAL_TRUNCATED if cut else SKIP_IDENTICAL_TOKENS)
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
