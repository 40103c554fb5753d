"""Readers, normalisation and validation of preference records (dpokit.data.formats,
normalize, records): every accepted shape, every promised error text, every counted skip."""

import json
from pathlib import Path

import pytest

from dpokit.data.formats import read_records
from dpokit.data.normalize import load_pairs, normalize_record, split_pairs
from dpokit.data.audit import group_by_prompt
from dpokit.data.records import DataError, PreferencePair, SkipPair, SkipReport, prompt_key

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

U = lambda text: {"role": "user", "content": text}  # noqa: E731
A = lambda text: {"role": "assistant", "content": text}  # noqa: E731


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def content(pairs):
    """What the pairs say, without where they came from."""
    return [(p.prompt, p.chosen, p.rejected, p.votes, p.chosen_finished, p.rejected_finished) for p in pairs]


# ---------------------------------------------------------------- accepted shapes


def test_text_record():
    pair = normalize_record({"prompt": "Hi", "chosen": "Yes", "rejected": "No", "extra": 1}, "f.jsonl:1")
    assert pair == PreferencePair("Hi", "Yes", "No", "f.jsonl:1", None)
    assert not pair.is_chat


def test_empty_text_prompt_is_kept():
    # Documented decision: unconditional text is legitimate; tokenize gives it a start token.
    assert normalize_record({"prompt": "", "chosen": "a", "rejected": "b"}, "s").prompt == ""


def test_conversational_record_string_answer_becomes_assistant_message():
    raw = {"prompt": [{"role": "system", "content": "Be kind."}, U("Hi")], "chosen": "Yes", "rejected": [A("No")]}
    pair = normalize_record(raw, "s")
    assert pair.is_chat
    assert pair.prompt == [{"role": "system", "content": "Be kind."}, U("Hi")]
    assert pair.chosen == [A("Yes")] and pair.rejected == [A("No")]


def test_message_none_keys_dropped():
    # Parquet / datasets fill absent struct keys with None; they must not reach templates.
    raw = {"prompt": [{"role": "user", "content": "Hi", "name": None}], "chosen": "a", "rejected": "b"}
    assert normalize_record(raw, "s").prompt == [U("Hi")]


def test_implicit_prompt_longest_common_prefix():
    chosen = [U("Hi"), A("Hello"), U("Joke?"), A("Sure: knock knock.")]
    rejected = [U("Hi"), A("Hello"), U("Joke?"), A("No.")]
    pair = normalize_record({"chosen": chosen, "rejected": rejected}, "s")
    assert pair.prompt == chosen[:3]
    assert pair.chosen == [A("Sure: knock knock.")] and pair.rejected == [A("No.")]


def test_hh_single_turn():
    raw = {"chosen": "\n\nHuman: Hi\n\nAssistant: Yes", "rejected": "\n\nHuman: Hi\n\nAssistant: No"}
    pair = normalize_record(raw, "s")
    assert (pair.prompt, pair.chosen, pair.rejected) == ("\n\nHuman: Hi\n\nAssistant:", " Yes", " No")
    assert not pair.is_chat


def test_hh_multi_turn_and_shared_answer_start():
    # Both answers start with "Sure, " and earlier turns are shared: the prompt still ends at
    # the last shared "\n\nAssistant:", not inside the answers.
    head = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Help me?\n\nAssistant:"
    raw = {"chosen": head + " Sure, gladly.", "rejected": head + " Sure, no."}
    pair = normalize_record(raw, "s")
    assert pair.prompt == head
    assert (pair.chosen, pair.rejected) == (" Sure, gladly.", " Sure, no.")


@pytest.mark.parametrize(
    "extra, votes",
    [({"votes": [3, 1]}, (3, 1)), ({"chosen_votes": 0, "rejected_votes": 2}, (0, 2)), ({"votes": None}, None), ({}, None)],
)
def test_votes(extra, votes):
    assert normalize_record({"prompt": "p", "chosen": "a", "rejected": "b", **extra}, "s").votes == votes


@pytest.mark.parametrize(
    "extra, flags",
    [
        ({}, (True, True)),
        ({"chosen_finished": None, "rejected_finished": None}, (True, True)),  # Parquet/datasets fill
        ({"chosen_finished": True, "rejected_finished": False}, (True, False)),
        ({"chosen_finished": False}, (False, True)),
    ],
)
def test_finished_flags(extra, flags):
    pair = normalize_record({"prompt": "p", "chosen": "a", "rejected": "b", **extra}, "s")
    assert (pair.chosen_finished, pair.rejected_finished) == flags


def test_finished_flags_default_pair_equals_todays():
    # A record without flags is the same PreferencePair as before the flags existed.
    assert normalize_record({"prompt": "p", "chosen": "a", "rejected": "b"}, "s") == PreferencePair("p", "a", "b", "s")


# ---------------------------------------------------------------- malformed records

MALFORMED = [
    ({"prompt": "p", "rejected": "b"}, "f.jsonl:7: field 'chosen': missing"),
    ({"prompt": "p", "chosen": "a", "rejected": None}, "f.jsonl:7: field 'rejected': missing"),
    ({"prompt": "p", "chosen": 3, "rejected": "b"}, "f.jsonl:7: field 'chosen': expected a string or a list of messages, got int"),
    ({"prompt": 5, "chosen": "a", "rejected": "b"}, "f.jsonl:7: field 'prompt': expected a string or a list of messages, got int"),
    ({"prompt": "p", "chosen": [A("a")], "rejected": "b"}, "f.jsonl:7: field 'chosen': the prompt is text, so the answer must be text, not a list of messages"),
    ({"prompt": [{"content": "Hi"}], "chosen": "a", "rejected": "b"}, "f.jsonl:7: field 'prompt[0]': message has no 'role'"),
    ({"prompt": [U("Hi"), {"role": "user"}], "chosen": "a", "rejected": "b"}, "f.jsonl:7: field 'prompt[1]': message has no 'content'"),
    ({"prompt": ["Hi"], "chosen": "a", "rejected": "b"}, "f.jsonl:7: field 'prompt[0]': expected a message object, got str"),
    (
        {"prompt": [{"role": "bot", "content": "Hi"}], "chosen": "a", "rejected": "b"},
        "f.jsonl:7: field 'prompt[0]': unknown role 'bot'; expected one of ['system', 'user', 'assistant', 'tool']",
    ),
    ({"prompt": [{"role": "user", "content": ["x"]}], "chosen": "a", "rejected": "b"}, "f.jsonl:7: field 'prompt[0]': 'content' must be a string, got list"),
    ({"prompt": [U("Hi")], "chosen": [U("a")], "rejected": "b"}, "f.jsonl:7: field 'chosen': the answer must start with an assistant message, got role 'user'"),
    ({"prompt": [U("Hi"), A("x")], "chosen": "a", "rejected": "b"}, "f.jsonl:7: field 'prompt': the last prompt message must not be the assistant's (that is the answer)"),
    (
        {"chosen": [U("Hi"), A("a")], "rejected": [U("Hey"), A("b")]},
        "f.jsonl:7: field 'prompt': missing, and chosen/rejected conversations share no common prefix",
    ),
    (
        {"chosen": [U("Hi"), A("a"), U("x")], "rejected": [U("Hi"), A("a"), U("y")]},
        "f.jsonl:7: field 'chosen': conversations diverge at a 'user' message; the shared prompt must end right before an assistant message",
    ),
    ({"chosen": "Hello", "rejected": "Bye"}, "f.jsonl:7: field 'prompt': missing, and chosen/rejected share no '\\n\\nAssistant:' prefix to infer it from"),
    ({"chosen": "x", "rejected": [A("y")]}, "f.jsonl:7: field 'rejected': one of chosen/rejected is text and the other a list of messages"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "votes": [1]}, "f.jsonl:7: field 'votes': expected [votes for chosen, votes for rejected] or {rater: \"chosen\" | \"rejected\"}"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "votes": [2, -1]}, "f.jsonl:7: field 'votes': votes must be non-negative integers (got [2, -1])"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "votes": [True, 0]}, "f.jsonl:7: field 'votes': votes must be non-negative integers (got [True, 0])"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "votes": [0, 0]}, "f.jsonl:7: field 'votes': votes are both zero: no preference to learn"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "chosen_votes": 2}, "f.jsonl:7: field 'chosen_votes/rejected_votes': votes must be non-negative integers (got [2, None])"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "chosen_finished": "false"}, "f.jsonl:7: field 'chosen_finished': expected true or false, got str"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "rejected_finished": 0}, "f.jsonl:7: field 'rejected_finished': expected true or false, got int"),
    (["p", "a", "b"], "f.jsonl:7: expected a JSON object, got list"),
]


@pytest.mark.parametrize("raw, message", MALFORMED)
def test_malformed_record_error_text(raw, message):
    with pytest.raises(DataError) as info:
        normalize_record(raw, "f.jsonl:7")
    assert str(info.value) == message
    assert info.value.source == "f.jsonl:7"


def test_malformed_raises_from_file_with_line_number(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}] * 2 + [{"prompt": "p", "chosen": 1, "rejected": "b"}])
    with pytest.raises(DataError, match=r"^d\.jsonl:3: field 'chosen': expected a string or a list of messages, got int$"):
        load_pairs(path)


def test_finished_flags_read_from_jsonl_and_bad_value_names_file_line_field(tmp_path):
    ok = {"prompt": "p", "chosen": "a", "rejected": "b"}
    path = write_jsonl(tmp_path / "d.jsonl", [{**ok, "chosen_finished": False}, ok, {**ok, "rejected_finished": "no"}])
    with pytest.raises(DataError, match=r"^d\.jsonl:3: field 'rejected_finished': expected true or false, got str$"):
        load_pairs(path)
    pairs, report = load_pairs(path, on_malformed="skip")
    assert [(p.chosen_finished, p.rejected_finished) for p in pairs] == [(False, True), (True, True)]
    assert report.counts == {"malformed: field 'rejected_finished': expected true or false, got str": 1}


def test_malformed_skip_mode_counts_reasons(tmp_path):
    records = [{"prompt": "p", "chosen": 1, "rejected": "b"}, {"prompt": "p", "chosen": 2.5, "rejected": "b"}, {"prompt": "p", "chosen": "a", "rejected": "b"}]
    pairs, report = load_pairs(write_jsonl(tmp_path / "d.jsonl", records), on_malformed="skip")
    assert content(pairs) == [("p", "a", "b", None, True, True)]
    assert report.counts == {
        "malformed: field 'chosen': expected a string or a list of messages, got int": 1,
        "malformed: field 'chosen': expected a string or a list of messages, got float": 1,
    }
    assert report.examples("malformed: field 'chosen': expected a string or a list of messages, got int") == ["d.jsonl:1"]


def test_on_malformed_value_checked(tmp_path):
    with pytest.raises(ValueError, match="on_malformed"):
        load_pairs(write_jsonl(tmp_path / "d.jsonl", []), on_malformed="ignore")


# ---------------------------------------------------------------- content skips

SKIPS = [
    ({"prompt": "p", "chosen": "a", "rejected": "  \n"}, "empty completion"),
    ({"prompt": "p", "chosen": "", "rejected": "b"}, "empty completion"),
    ({"prompt": [U("Hi")], "chosen": [], "rejected": "b"}, "empty completion"),
    ({"prompt": [U("Hi")], "chosen": [A(" ")], "rejected": "b"}, "empty completion"),
    ({"prompt": "p", "chosen": "same", "rejected": "same "}, "identical chosen and rejected"),
    ({"prompt": [U("Hi")], "chosen": "same", "rejected": [A("same")]}, "identical chosen and rejected"),
    ({"chosen": [U("Hi"), A("x")], "rejected": [U("Hi"), A("x")]}, "identical chosen and rejected"),
    ({"chosen": "\n\nHuman: Hi\n\nAssistant: x", "rejected": "\n\nHuman: Hi\n\nAssistant: x"}, "identical chosen and rejected"),
    ({"chosen": [U("Hi"), A("x")], "rejected": [U("Hi")]}, "empty completion"),
    ({"prompt": [], "chosen": "a", "rejected": "b"}, "empty prompt"),
]


@pytest.mark.parametrize("raw, reason", SKIPS)
def test_content_skip_reason(raw, reason):
    with pytest.raises(SkipPair) as info:
        normalize_record(raw, "s")
    assert info.value.reason == reason


def test_content_skips_are_counted_not_raised(tmp_path):
    records = [{"prompt": "p", "chosen": "a", "rejected": ""}, {"prompt": "p", "chosen": "a", "rejected": "a"}, {"prompt": "q", "chosen": "a", "rejected": "b"}]
    pairs, report = load_pairs(write_jsonl(tmp_path / "d.jsonl", records))
    assert len(pairs) == 1 and pairs[0].source == "d.jsonl:3"
    assert report.counts == {"empty completion": 1, "identical chosen and rejected": 1}
    assert report.total == 2


# ---------------------------------------------------------------- readers

TEXT = [
    {"prompt": "Hi", "chosen": "Hello!", "rejected": "What?", "votes": [3, 1], "rejected_finished": False},
    {"prompt": "2+2?", "chosen": "4", "rejected": "5", "votes": None, "rejected_finished": None},
    {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello.", "rejected": "\n\nHuman: Hi\n\nAssistant: Go.", "votes": None, "rejected_finished": True},
]
CHAT = [
    {"prompt": [U("Hi")], "chosen": [A("Hello!")], "rejected": [A("What?")]},
    {"prompt": [{"role": "system", "content": "Be brief."}, U("2+2?")], "chosen": [A("4")], "rejected": [A("5")]},
]


def test_jsonl_lines_blank_lines_and_invalid_json(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"a": 2}\n{"a": \n')
    reader = read_records(path)
    assert next(reader) == ("d.jsonl:1", {"a": 1})
    assert next(reader) == ("d.jsonl:4", {"a": 2})
    with pytest.raises(DataError, match=r"^d\.jsonl:5: invalid JSON \(Expecting value at column 6\)$"):
        next(reader)


def test_invalid_json_line_skipped_in_skip_mode(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\nnot json\n{"prompt": "q", "chosen": "a", "rejected": "b"}\n')
    pairs, report = load_pairs(path, on_malformed="skip")
    assert [p.source for p in pairs] == ["d.jsonl:1", "d.jsonl:3"]
    assert report.counts == {"malformed: invalid JSON": 1}


def test_json_array_and_json_lines_under_json(tmp_path):
    arr = tmp_path / "a.json"
    arr.write_text(json.dumps(TEXT))
    lines = write_jsonl(tmp_path / "l.json", TEXT)
    a_pairs, _ = load_pairs(arr)
    l_pairs, _ = load_pairs(lines)
    assert [p.source for p in a_pairs] == ["a.json:item 0", "a.json:item 1", "a.json:item 2"]
    assert [p.source for p in l_pairs] == ["l.json:1", "l.json:2", "l.json:3"]
    assert content(a_pairs) == content(l_pairs)


@pytest.mark.parametrize("records", [TEXT, CHAT], ids=["text", "chat"])
def test_jsonl_parquet_and_datasets_dir_agree(tmp_path, records):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset, DatasetDict

    jsonl = write_jsonl(tmp_path / "d.jsonl", records)
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "d.parquet")
    Dataset.from_list(records).save_to_disk(str(tmp_path / "single"))
    DatasetDict({"train": Dataset.from_list(records), "test": Dataset.from_list(records[:1])}).save_to_disk(str(tmp_path / "dd"))

    expected, _ = load_pairs(jsonl)
    assert len(expected) == len(records)
    for path in ("d.parquet", "single", "dd"):
        pairs, report = load_pairs(tmp_path / path)
        assert content(pairs) == content(expected), path
        assert report.total == 0
    assert [p.source for p in load_pairs(tmp_path / "d.parquet")[0]][:2] == ["d.parquet:row 0", "d.parquet:row 1"]
    assert load_pairs(tmp_path / "dd")[0][1].source == "dd[train]:row 1"
    test_pairs, _ = load_pairs(tmp_path / "dd", split="test")
    assert content(test_pairs) == content(expected[:1]) and test_pairs[0].source == "dd[test]:row 0"


def test_datasets_dir_split_errors(tmp_path):
    from datasets import Dataset, DatasetDict

    ds = Dataset.from_list(TEXT[:2])
    DatasetDict({"dev": ds, "test": ds}).save_to_disk(str(tmp_path / "two"))
    DatasetDict({"dev": ds}).save_to_disk(str(tmp_path / "one"))
    with pytest.raises(DataError, match=r"^two: no 'train' split; pass split= one of \['dev', 'test'\]$"):
        load_pairs(tmp_path / "two")
    with pytest.raises(DataError, match=r"^two: no split 'train2'; available splits: \['dev', 'test'\]$"):
        load_pairs(tmp_path / "two", split="train2")
    assert len(load_pairs(tmp_path / "one")[0]) == 2  # the only split is taken


def test_unsupported_missing_and_split_on_file(tmp_path):
    (tmp_path / "d.csv").write_text("prompt,chosen,rejected\n")
    with pytest.raises(DataError, match=r"^d\.csv: unsupported file type '\.csv'"):
        load_pairs(tmp_path / "d.csv")
    with pytest.raises(DataError, match="no such file or directory"):
        load_pairs(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="only datasets directories have splits"):
        load_pairs(write_jsonl(tmp_path / "d.jsonl", TEXT), split="train")


# ---------------------------------------------------------------- reports and splits


def test_skip_report_counts_examples_merge_and_truncations():
    a, b = SkipReport(), SkipReport()
    for i in range(5):
        a.add("empty completion", f"f:{i}")
    b.add("empty completion", "g:1")
    b.add("identical chosen and rejected", "g:2")
    b.add_truncation("chosen: kept its start", "g:3")
    a.merge(b)
    assert a.total == 7  # truncations are not skips
    assert a.counts == {"empty completion": 6, "identical chosen and rejected": 1}
    assert a.truncations == {"chosen: kept its start": 1}
    assert a.examples("empty completion") == ["f:0", "f:1", "f:2"]
    d = a.to_dict()
    assert d["skipped_total"] == 7
    assert d["skipped"]["identical chosen and rejected"] == {"count": 1, "examples": ["g:2"]}
    assert d["truncated"] == {"chosen: kept its start": {"count": 1, "examples": ["g:3"]}}
    json.dumps(d)
    text = a.format()
    assert "skipped 7 record(s)" in text and "truncated 1 part(s)" in text and "empty completion" in text
    assert SkipReport().format() == "no records skipped or truncated"


def _pairs(prompts):
    return [PreferencePair(p, "a", "b", f"s:{i}") for i, p in enumerate(prompts)]


def test_split_pairs_deterministic_disjoint_and_grouped_by_prompt():
    pairs = _pairs([f"p{i % 20}" for i in range(60)])  # 20 prompts, 3 pairs each
    train, evals = split_pairs(pairs, 0.1, seed=1)
    assert (train, evals) == split_pairs(pairs, 0.1, seed=1)
    assert len(train) + len(evals) == 60 and len(evals) == 6
    assert {p.source for p in train}.isdisjoint({p.source for p in evals})
    assert not {p.prompt for p in train} & {p.prompt for p in evals}
    assert [p.source for p in train] == sorted((p.source for p in train), key=lambda s: int(s[2:]))  # input order
    assert split_pairs(pairs, 0.1, seed=2)[1] != evals


def test_split_pairs_edges():
    pairs = _pairs(["a", "b", "c"])
    assert split_pairs(pairs, 0.0, seed=0) == (pairs, [])
    assert len(split_pairs(pairs, 0.01, seed=0)[1]) == 1  # a positive fraction gives at least one
    assert len(split_pairs(_pairs(["a", "a"]), 0.5, seed=0)[1]) == 0  # one prompt group stays in train
    with pytest.raises(ValueError):
        split_pairs(pairs, 1.0, seed=0)


def test_split_and_audit_share_one_prompt_identity():
    # A text prompt spelled like a chat prompt's serialised messages is another prompt: the
    # audit never grouped them; the split used to, and could not hold either one out.
    chat = PreferencePair([U("hi")], [A("a")], [A("b")], "s:0")
    text = PreferencePair(json.dumps(chat.prompt, sort_keys=True), "a", "b", "s:1")
    assert prompt_key(chat) != prompt_key(text)
    train, evals = split_pairs([chat, text], 0.5, seed=0)
    assert len(train) == len(evals) == 1
    assert len(group_by_prompt([chat, text])) == 2


def test_counts_line_says_zeros_too():
    report = SkipReport()
    assert report.counts_line() == "0 skipped, 0 truncated"
    report.add("empty completion", "f:1")
    report.add("empty completion", "f:2")
    report.add("empty prompt", "f:3")
    report.add_truncation("chosen: kept its start", "f:4")
    assert report.counts_line() == "3 skipped (2 empty completion, 1 empty prompt), 1 truncated"


@pytest.mark.parametrize("text", ["\u200b", "\u200c\u200d", "\u2060", "\ufeff", "\u00ad", " \u200b\n\u3000", "\u202e", "\u3164", "\x07"])
def test_invisible_only_completion_is_empty(text):
    with pytest.raises(SkipPair, match="^empty completion$"):
        normalize_record({"prompt": "p", "chosen": text, "rejected": "b"}, "s:1")
    with pytest.raises(SkipPair, match="^empty completion$"):
        normalize_record({"prompt": [U("p")], "chosen": "b", "rejected": [A(text)]}, "s:1")


def test_invisible_characters_do_not_make_a_completion_different():
    with pytest.raises(SkipPair, match="^identical chosen and rejected$"):
        normalize_record({"prompt": "p", "chosen": "y\u200bes\u00ad", "rejected": "yes"}, "s:1")
    # Visible differences, inner whitespace included, still count.
    assert normalize_record({"prompt": "p", "chosen": "a b", "rejected": "a\tb"}, "s:1").chosen == "a b"


def test_json_null_line_is_a_record_not_a_gap(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\nnull\n')
    with pytest.raises(DataError, match=r"^d\.jsonl:2: expected a JSON object, got null$"):
        load_pairs(path)
    pairs, report = load_pairs(path, on_malformed="skip")
    assert len(pairs) == 1 and report.counts == {"malformed: expected a JSON object, got null": 1}


def test_non_utf8_names_line_and_byte_offset(tmp_path):
    path = tmp_path / "pairs.jsonl"
    good = b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
    path.write_bytes(good + good + b'{"prompt": "abcdefghijk\xff", "chosen": "b", "rejected": "c"}\n')
    with pytest.raises(DataError, match=r"^pairs\.jsonl:3: not valid UTF-8 \(byte 0xff at offset 23 of the line\)$"):
        load_pairs(path)


def test_error_messages_are_one_line(tmp_path):
    err = DataError("a\nb.jsonl", "cannot read as Parquet", detail="first\nsecond")
    assert str(err) == "a b.jsonl: cannot read as Parquet (first second)"


# ---------------------------------------------------------------- shipped examples


def test_example_pairs_file_loads_cleanly():
    pairs, report = load_pairs(EXAMPLES / "pairs.jsonl")
    assert len(pairs) == 48 and report.total == 0
    assert all(not p.is_chat and p.prompt and p.chosen != p.rejected for p in pairs)


def test_example_bad_pairs_file():
    with pytest.raises(DataError, match=r"^bad_pairs\.jsonl:2: field 'chosen': missing$"):
        load_pairs(EXAMPLES / "bad_pairs.jsonl")
    pairs, report = load_pairs(EXAMPLES / "bad_pairs.jsonl", on_malformed="skip")
    assert len(pairs) == 3
    assert [p.is_chat for p in pairs] == [False, True, False] and pairs[2].votes == (4, 1)
    assert {r: n for r, n in report.counts.items() if not r.startswith("malformed")} == {
        "empty completion": 1,
        "identical chosen and rejected": 1,
        "empty prompt": 1,
    }
    assert sum(n for r, n in report.counts.items() if r.startswith("malformed")) == 12


# ---------------------------------------------------------------- named raters


def test_named_raters_are_kept_and_counted():
    raw = {"prompt": "p", "chosen": "a", "rejected": "b", "votes": {"bob": "rejected", "alice": "chosen", "carol": "chosen"}}
    pair = normalize_record(raw, "s")
    assert pair.votes == (2, 1)  # the soft label q = 2/3 comes from the counts
    assert pair.raters == (("alice", True), ("bob", False), ("carol", True))
    assert normalize_record({"prompt": "p", "chosen": "a", "rejected": "b", "votes": [2, 1]}, "s").raters is None


@pytest.mark.parametrize("votes, field, reason", [
    ({}, "votes", "no rater voted"),
    ({"alice": "yes"}, "votes.alice", 'expected "chosen" or "rejected"'),
    ({"alice": 1}, "votes.alice", 'expected "chosen" or "rejected"'),
    ({" ": "chosen"}, "votes", "name must not be empty"),
])
def test_malformed_named_raters(votes, field, reason):
    with pytest.raises(DataError) as err:
        normalize_record({"prompt": "p", "chosen": "a", "rejected": "b", "votes": votes}, "f.jsonl:9")
    assert err.value.field == field and reason in str(err.value)
