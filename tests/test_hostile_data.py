"""Hostile data through the command line: zero silent passes.

Every entry of tests/hostile/data holds one defect, which its name says (a few hold none:
BOM, CRLF, ... files that must load in full). Each is run through `dpokit audit` and
`dpokit dpo` (tiny model, one step) and must end as one of:

    Err     exit 2, exactly one stderr line `dpokit: data error: FILE[:LINE]: [field 'F': ]...`,
            no traceback, no training step
    Skip    exit 0, the defective record counted by reason on stdout and in data_report.json
            (the audit counts loader skips; it does not tokenize, so tokenizer skips such as
            special-token text are the training commands' to count)
    Clean   exit 0, every record kept, "0 skipped, 0 truncated" printed

Files whose error is per record are also read with on_malformed=skip, where the record must
become exactly one counted skip and the good records stay.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

from dpokit.cli import main
from dpokit.data.audit import audit_pairs, format_report, write_report
from dpokit.data.normalize import load_pairs
from dpokit.data.records import PreferencePair
from dpokit.testing import tiny_model, tiny_tokenizer

DATA = Path(__file__).parent / "hostile" / "data"
# Short enough that identical_after_truncation.jsonl's 60-"A" completions are both cut to
# the same start; every other file's pairs fit.
LENGTHS = ["max_length=48", "max_prompt_length=16"]


@dataclass(frozen=True)
class Err:
    where: str  # what the message names first: "file:line", "file:item I", "file:row R" or "file"
    says: str  # part of the reason (with the field, where there is one)
    per_record: bool = True  # False: the whole file is unreadable, so skip mode raises too


@dataclass(frozen=True)
class Skip:
    reason: str
    stage: str = "loading"  # or "tokenizing_train"
    kept: int = 2


@dataclass(frozen=True)
class Clean:
    kept: int = 2


@dataclass(frozen=True)
class NoPairs:
    """Every record is a counted skip: the audit shows the counts (exit 0), training has
    nothing to learn from (exit 2, naming the file and the counts)."""

    counts: str  # SkipReport.counts_line() of the stage that dropped them
    stage: str = "loading"
    records: int = 2


def _err(name: str, line: int | None, says: str, per_record: bool | None = None) -> Err:
    per_record = line is not None if per_record is None else per_record
    return Err(f"{name}:{line}" if line else name, says, per_record)


LINE2_ERRORS = {  # file -> what its line 2 (between two good records) is told
    "line_null.jsonl": "expected a JSON object, got null",
    "line_array.jsonl": "expected a JSON object, got list",
    "line_number.jsonl": "expected a JSON object, got int",
    "line_string.jsonl": "expected a JSON object, got str",
    "line_bool.jsonl": "expected a JSON object, got bool",
    "unterminated_string.jsonl": "invalid JSON (Unterminated string",
    "trailing_comma.jsonl": "invalid JSON (Expecting property name",
    "single_quotes.jsonl": "invalid JSON (Expecting property name",
    "python_none.jsonl": "invalid JSON (Expecting value at column 44)",
    "two_objects_one_line.jsonl": "invalid JSON (Extra data",
    "deep_nesting.jsonl": "invalid JSON (nested too deeply to parse)",
    "deep_nesting_in_field.jsonl": "invalid JSON (nested too deeply to parse)",
    "huge_int_votes.jsonl": "invalid JSON (Exceeds the limit (4300 digits)",
    "huge_float_votes.jsonl": "field 'votes': votes must be non-negative integers (got [inf, 1])",
    "nan_votes.jsonl": "field 'votes': votes must be non-negative integers (got [nan, 1])",
    "infinity_votes.jsonl": "field 'chosen_votes/rejected_votes': votes must be non-negative integers (got [inf, 1])",
    "negative_votes.jsonl": "field 'votes': votes must be non-negative integers",
    "fractional_votes.jsonl": "field 'votes': votes must be non-negative integers",
    "bool_votes.jsonl": "field 'votes': votes must be non-negative integers",
    "zero_votes.jsonl": "field 'votes': votes are both zero",
    "votes_three_items.jsonl": "field 'votes': expected [votes for chosen, votes for rejected]",
    "votes_string.jsonl": "field 'votes': expected [votes for chosen, votes for rejected]",
    "duplicate_key.jsonl": "duplicate key in an object ('chosen')",
    "lone_surrogate_chosen.jsonl": "field 'chosen': not valid Unicode: a lone surrogate (\\ud800 at character 1)",
    "lone_low_surrogate_prompt.jsonl": "field 'prompt': not valid Unicode: a lone surrogate (\\udc00",
    "reversed_surrogate_pair_rejected.jsonl": "field 'rejected': not valid Unicode: a lone surrogate (\\ude00",
    "lone_surrogate_chat_content.jsonl": "field 'prompt[0].content': not valid Unicode: a lone surrogate (\\udfff",
    "latin1_encoded.jsonl": "not valid UTF-8 (byte 0xe9 at offset 15 of the line)",
    "overlong_utf8.jsonl": "not valid UTF-8 (byte 0xc0 at offset 13 of the line)",
    "utf8_encoded_surrogate.jsonl": "not valid UTF-8 (byte 0xed at offset 13 of the line)",
    "nul_byte.jsonl": "holds a NUL byte",
    "missing_chosen.jsonl": "field 'chosen': missing",
    "missing_rejected.jsonl": "field 'rejected': missing",
    "chosen_number.jsonl": "field 'chosen': expected a string or a list of messages, got int",
    "rejected_object.jsonl": "field 'rejected': expected a string or a list of messages, got dict",
    "prompt_number.jsonl": "field 'prompt': expected a string or a list of messages, got int",
    "text_prompt_chat_answer.jsonl": "field 'chosen': the prompt is text, so the answer must be text",
    "unknown_role.jsonl": "field 'prompt[0]': unknown role 'robot'",
    "message_without_content.jsonl": "field 'prompt[0]': message has no 'content'",
    "message_not_object.jsonl": "field 'prompt[0]': expected a message object, got str",
    "content_number.jsonl": "field 'prompt[0]': 'content' must be a string, got int",
    "answer_starts_with_user.jsonl": "field 'chosen': the answer must start with an assistant message",
    "prompt_ends_with_assistant.jsonl": "field 'prompt': the last prompt message must not be the assistant's",
    "finished_flag_string.jsonl": "field 'rejected_finished': expected true or false, got str",
    "hh_without_assistant_marker.jsonl": "field 'prompt': missing, and chosen/rejected share no",
    "text_and_chat_mixed.jsonl": "field 'rejected': one of chosen/rejected is text and the other a list",
    "implicit_prompt_no_common_prefix.jsonl": "field 'prompt': missing, and chosen/rejected conversations share no common prefix",
}
WHOLE_FILE_ERRORS = {  # file -> what the file as a whole is told
    "utf16le_bom.jsonl": "the file is UTF-16 (byte-order mark); save it as UTF-8",
    "utf16be_bom.jsonl": "the file is UTF-16 (byte-order mark)",
    "utf32le_bom.jsonl": "the file is UTF-32 (byte-order mark)",
    "empty.jsonl": "holds no records",
    "blank_lines_only.jsonl": "holds no records",
    "utf8_bom_only.jsonl": "holds no records",
    "array_deep_nesting.json": "invalid JSON (nested too deeply to parse)",
    "array_duplicate_key.json": "duplicate key in an object ('prompt')",
    "not_parquet.parquet": "cannot read as Parquet: Parquet magic bytes not found",
    "empty.parquet": "cannot read as Parquet: Parquet file size is 0 bytes",
    "truncated.parquet": "cannot read as Parquet",
    "parquet_magic_only.parquet": "cannot read as Parquet",
    "damaged_page_header.parquet": "cannot read as Parquet: Couldn't deserialize thrift",
    "damaged_page_data.parquet": "cannot read as Parquet",
    "directory_named.jsonl": "not a datasets directory",
    "unsupported.csv": "unsupported file type '.csv'",
    "no_extension": "unsupported file type 'no_extension'",
}


def _errors() -> dict:
    cases = {name: _err(name, 2, says) for name, says in LINE2_ERRORS.items()}
    cases["truncated_last_line.jsonl"] = _err("truncated_last_line.jsonl", 3, "invalid JSON (Unterminated string")
    cases["invalid_utf8_byte.jsonl"] = _err("invalid_utf8_byte.jsonl", 3, "not valid UTF-8 (byte 0xff at offset 15 of the line)")
    cases["utf8_cut_at_end_of_file.jsonl"] = _err("utf8_cut_at_end_of_file.jsonl", 3, "not valid UTF-8 (byte 0xe2 at offset 18 of the line)")
    for name, says in (  # every line is bad: the first one is named (skip mode counts them all)
        ("binary_garbage.jsonl", "not valid UTF-8 (byte 0xbd at offset 1 of the line)"),
        ("gzip_named_jsonl.jsonl", "holds a NUL byte: a binary file, or UTF-16 without a byte-order mark?"),
        ("utf16le_no_bom.jsonl", "holds a NUL byte"),
        ("pretty_object_not_array.json", "invalid JSON (Expecting property name"),
    ):
        cases[name] = _err(name, 1, says, per_record=False)
    cases.update({name: _err(name, None, says) for name, says in WHOLE_FILE_ERRORS.items()})
    # A broken JSON array cannot be read past its error: always raised, at its line or item.
    cases["array_not_closed.json"] = Err("array_not_closed.json:4", "invalid JSON (Expecting ',' delimiter", per_record=False)
    cases["array_trailing_garbage.json"] = Err("array_trailing_garbage.json:2", "invalid JSON (Extra data", per_record=False)
    cases["array_invalid_utf8.json"] = Err("array_invalid_utf8.json:3", "not valid UTF-8 (byte 0xfe at offset 14 of the line)", per_record=False)
    cases["array_of_null.json"] = Err("array_of_null.json:item 1", "expected a JSON object, got null")
    # A Parquet column has one type: every row of an int column is wrong.
    cases["parquet_rejected_int.parquet"] = Err("parquet_rejected_int.parquet:row 0", "field 'rejected': expected a string or a list of messages, got int", per_record=False)
    cases["parquet_missing_rejected.parquet"] = Err("parquet_missing_rejected.parquet:row 1", "field 'rejected': missing")
    return cases


def _skips() -> dict:
    empty = "empty completion"
    same = "identical chosen and rejected"
    special = "holds special-token text"
    tok = "tokenizing_train"
    return {
        **{name: Skip(empty) for name in (
            "zero_width_space_chosen.jsonl", "zero_width_joiners_rejected.jsonl", "word_joiner_and_bom_chosen.jsonl",
            "soft_hyphen_rejected.jsonl", "bidi_controls_chosen.jsonl", "hangul_filler_chosen.jsonl",
            "nbsp_ideographic_space_rejected.jsonl", "whitespace_only_chosen.jsonl", "control_chars_only_rejected.jsonl",
            "invisible_chat_answer.jsonl",
        )},
        **{name: Skip(same) for name in (
            "identical_pair.jsonl", "identical_but_zero_width.jsonl", "identical_but_whitespace.jsonl", "identical_conversations.jsonl",
        )},
        "empty_chat_prompt.jsonl": Skip("empty prompt"),
        "special_token_end_in_chosen.jsonl": Skip(f"field 'chosen': {special} '<|im_end|>'", tok),
        "special_token_injection_in_prompt.jsonl": Skip(f"field 'prompt': {special} '<|im_end|>'", tok),
        "endoftext_in_rejected.jsonl": Skip(f"field 'rejected': {special} '<|endoftext|>'", tok),
        "special_token_in_chat_message.jsonl": Skip(f"field 'prompt[0].content': {special} '<|im_end|>'", tok),
        "unfinished_with_eos_text.jsonl": Skip(f"field 'chosen': {special} '<|im_end|>'", tok),
        "identical_after_truncation.jsonl": Skip("identical after truncation", tok),
        "no_usable_pairs.jsonl": NoPairs(f"2 skipped (1 {empty}, 1 {same}), 0 truncated"),
        "all_special_token_text.jsonl": NoPairs(
            f"2 skipped (1 field 'chosen': {special} '<|im_end|>', 1 field 'prompt': {special} '<|im_start|>'), 0 truncated", tok
        ),
    }


def _clean() -> dict:
    names = (
        "crlf_line_endings.jsonl", "cr_only_line_endings.jsonl", "utf8_bom.jsonl", "utf8_bom_array.json",
        "line_separators_inside_strings.jsonl", "emoji_escaped_surrogate_pair.jsonl", "no_final_newline.jsonl",
        "blank_lines_between.jsonl",
    )
    return {name: Clean() for name in names}


CASES = {**_errors(), **_skips(), **_clean()}
NAMES = sorted(CASES)


def test_the_corpus_and_its_expectations_match():
    on_disk = sorted(p.name for p in DATA.iterdir())
    assert on_disk == NAMES  # a new file needs an expectation; a listed one must exist
    assert len(on_disk) >= 60


# ---------------------------------------------------------------- running the commands


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from transformers.utils import logging as hf_logging

    # Loading bars would be stderr lines of their own; the test wants dpokit's one line.
    hf_logging.disable_progress_bar()
    d = tmp_path_factory.mktemp("tiny")
    tiny_model().save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    yield d
    hf_logging.enable_progress_bar()


def run_dpo(path: Path, model_dir: Path, out: Path, *extra: str) -> int:
    args = ["dpo", f"data={path}", f"model={model_dir}", f"output_dir={out}", "max_steps=1", "batch_size=2"]
    return main([*args, "progress=false", "eval_fraction=0", *LENGTHS, *extra])


def assert_one_error_line(capsys, case: Err | NoPairs, name: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    where = case.where if isinstance(case, Err) else name
    assert lines[0].startswith(f"dpokit: data error: {where}: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("name", NAMES)
def test_audit(name, capsys):
    case = CASES[name]
    code = main(["audit", str(DATA / name)])
    if isinstance(case, Err):
        assert code == 2
        assert case.says in assert_one_error_line(capsys, case, name)
        return
    assert code == 0
    first = capsys.readouterr().out.splitlines()[0]
    if isinstance(case, Clean):
        assert f"{case.kept} records (0 skipped)" in first
    elif isinstance(case, NoPairs):
        shown = (0, case.records) if case.stage == "loading" else (case.records, 0)
        assert f"{shown[0]} records ({shown[1]} skipped)" in first
    elif case.stage == "loading":
        assert f"{case.kept} records (1 skipped)" in first
    else:  # a tokenizer skip: the audit sees a valid record
        assert f"{case.kept + 1} records (0 skipped)" in first


@pytest.mark.parametrize("name", NAMES)
def test_dpo(name, tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DPOKIT_CACHE", str(tmp_path / "cache"))
    case, out = CASES[name], tmp_path / "run"
    code = run_dpo(DATA / name, tiny_dir, out)
    if isinstance(case, (Err, NoPairs)):
        assert code == 2
        line = assert_one_error_line(capsys, case, name)
        assert (case.says if isinstance(case, Err) else f"no usable pairs ({case.counts})") in line
        assert not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text()  # no step ran
        return
    assert code == 0
    stdout = capsys.readouterr().out
    report = json.loads((out / "data_report.json").read_text())
    skipped = {stage: report[stage]["skipped"] for stage in ("loading", "tokenizing_train")}
    assert report["train_pairs"] == case.kept
    if isinstance(case, Clean):
        assert skipped == {"loading": {}, "tokenizing_train": {}}
        assert "; 0 skipped, 0 truncated" in stdout
        return
    other = "tokenizing_train" if case.stage == "loading" else "loading"
    assert skipped[other] == {} and list(skipped[case.stage]) == [case.reason]
    assert skipped[case.stage][case.reason]["count"] == 1
    assert skipped[case.stage][case.reason]["examples"] == [f"{name}:2"]
    assert f"; 1 skipped (1 {case.reason})," in stdout


@pytest.mark.parametrize("name", [n for n in NAMES if isinstance(CASES[n], Err) and CASES[n].per_record])
def test_per_record_errors_are_one_counted_skip_in_skip_mode(name):
    case = CASES[name]
    pairs, report = load_pairs(DATA / name, on_malformed="skip")
    (reason,) = report.counts
    assert report.total == 1 and reason.startswith("malformed: ")
    assert report.examples(reason) == [case.where]
    assert len(pairs) == (1 if name.endswith(".parquet") else 2)  # the good records stay


def test_skip_mode_through_the_command_line(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DPOKIT_CACHE", str(tmp_path / "cache"))
    assert run_dpo(DATA / "line_null.jsonl", tiny_dir, tmp_path / "run", "on_malformed=skip") == 0
    assert "1 skipped (1 malformed: expected a JSON object, got null), 0 truncated" in capsys.readouterr().out
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["loading"]["skipped"]["malformed: expected a JSON object, got null"]["examples"] == ["line_null.jsonl:2"]


# One of each kind of path (line error, undecodable bytes, whole-file error, a counted
# skip that leaves nothing) through the other commands that read data.
OTHER_COMMANDS = ["line_null.jsonl", "invalid_utf8_byte.jsonl", "lone_surrogate_chosen.jsonl", "utf16le_bom.jsonl", "no_usable_pairs.jsonl"]


@pytest.mark.parametrize("name", OTHER_COMMANDS)
def test_sft_and_score(name, tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DPOKIT_CACHE", str(tmp_path / "cache"))
    case, path = CASES[name], DATA / name
    says = case.says if isinstance(case, Err) else f"no usable pairs ({case.counts})"
    sft = ["sft", f"data={path}", f"model={tiny_dir}", f"output_dir={tmp_path / 'run'}", "max_steps=1", "progress=false"]
    assert main(sft) == 2
    assert says in assert_one_error_line(capsys, case, name)
    out = tmp_path / "scores.jsonl"
    assert main(["score", "--model", str(tiny_dir), "--ref", str(tiny_dir), "--data", str(path), "--out", str(out)]) == 2
    assert says in assert_one_error_line(capsys, case, name)
    assert not out.exists()


def test_eval_data_with_no_usable_pairs_is_named(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DPOKIT_CACHE", str(tmp_path / "cache"))
    case = CASES["no_usable_pairs.jsonl"]
    code = run_dpo(DATA / "crlf_line_endings.jsonl", tiny_dir, tmp_path / "run", f"eval_data={DATA / 'no_usable_pairs.jsonl'}")
    assert code == 2
    assert f"no usable pairs ({case.counts})" in assert_one_error_line(capsys, case, "no_usable_pairs.jsonl")


# ---------------------------------------------------------------- made here: not committable as files


def test_unopenable_file_is_one_line(tiny_dir, tmp_path, capsys, monkeypatch):
    # A socket: exists, is not a directory, and open() fails (ENXIO) even for root.
    monkeypatch.setenv("DPOKIT_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "sock.jsonl"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    try:
        case = Err("sock.jsonl", "cannot read the file (No such device or address)")
        assert main(["audit", str(path)]) == 2
        assert case.says in assert_one_error_line(capsys, case, "sock.jsonl")
        assert run_dpo(path, tiny_dir, tmp_path / "run") == 2
        assert case.says in assert_one_error_line(capsys, case, "sock.jsonl")
    finally:
        server.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_permission_denied_is_one_line(tmp_path, capsys):
    path = tmp_path / "secret.jsonl"
    path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    path.chmod(0)
    assert main(["audit", str(path)]) == 2
    assert "cannot read the file (Permission denied)" in assert_one_error_line(capsys, Err("secret.jsonl", ""), "secret.jsonl")


def test_audit_prints_a_file_name_that_is_not_utf8(tmp_path, capsys):
    # A non-UTF-8 byte in a file name decodes to a lone surrogate (os.fsdecode); the audit
    # prints it in every source. Printing or writing it must not fail.
    path = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9.jsonl"))
    rec = json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n"
    path.write_text(rec * 2)
    out = tmp_path / "audit.json"
    assert main(["audit", str(path), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "(caf\\udce9.jsonl:1, caf\\udce9.jsonl:2)" in text
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["duplicates"]["examples"][0]["sources"] == ["caf\udce9.jsonl:1", "caf\udce9.jsonl:2"]  # reads back as itself


def test_audit_report_survives_lone_surrogates_in_pairs(tmp_path):
    # The loader rejects them; pairs built by hand can still hold one.
    pairs = [PreferencePair("q\ud800", "a\udfff", "b", source=f"x:{i}") for i in (1, 2)]
    report = audit_pairs(pairs)
    text = format_report(report)
    assert '"q\\ud800": "a\\udfff" ≻ "b" ×2 (x:1, x:2)' in text
    text.encode("utf-8")  # printable: nothing left that stdout could fail on
    write_report(report, tmp_path / "a.json")
    assert json.loads((tmp_path / "a.json").read_text())["duplicates"]["examples"][0]["chosen"] == "a\udfff"
