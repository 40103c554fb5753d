"""Case study 2's data plumbing (dpokit.tasks.instructions_data, instructions_config) and the
HH-RLHF / UltraFeedback readers, on the hand-written fixtures in tests/fixtures."""

import json
from pathlib import Path

import pytest

from dpokit.config import ConfigError, load_config
from dpokit.data.normalize import load_pairs, normalize_record
from dpokit.data.records import DataError, SkipPair
from dpokit.eval.policy_eval import SampleSet
from dpokit.generate import Completion
from dpokit.instructions.constraints import make_constraint
from dpokit.instructions.prompts import make_prompt
from dpokit.tasks import instructions_data as idata
from dpokit.tasks.instructions_config import InstructionsConfig

FIXTURES = Path(__file__).resolve().parent / "fixtures"
U = lambda text: {"role": "user", "content": text}
A = lambda text: {"role": "assistant", "content": text}


# -- UltraFeedback (binarized) in the loader ---------------------------------------------------
def uf(chosen="Yes, on a clear day.", rejected="No.", sc=8.0, sr=2.0, prompt="Is the sky blue?"):
    return {"prompt": prompt, "chosen": [U("Is the sky blue?"), A(chosen)], "rejected": [U("Is the sky blue?"), A(rejected)],
            "score_chosen": sc, "score_rejected": sr}


def test_ultrafeedback_record_becomes_a_chat_pair():
    pair = normalize_record(uf(), "uf.jsonl:1")
    assert pair.is_chat and pair.prompt == [U("Is the sky blue?")]
    assert pair.chosen == [A("Yes, on a clear day.")] and pair.rejected == [A("No.")]
    # scores are optional
    raw = uf()
    del raw["score_chosen"], raw["score_rejected"]
    assert normalize_record(raw, "s").prompt == [U("Is the sky blue?")]


def test_ultrafeedback_ties_skip_and_contradictions_raise():
    with pytest.raises(SkipPair, match="tied scores"):
        normalize_record(uf(sc=7.0, sr=7.0), "s")
    with pytest.raises(DataError, match="score_chosen 2 is below score_rejected 8"):
        normalize_record(uf(sc=2.0, sr=8.0), "s")
    with pytest.raises(DataError, match="not the user turn given as 'prompt'"):
        normalize_record(uf(prompt="Another question?"), "s")
    with pytest.raises(DataError, match="field 'score_chosen': expected a number"):
        normalize_record(uf(sc="high"), "s")
    # an answer-only list with a text prompt keeps its old, precise error
    with pytest.raises(DataError, match="the prompt is text, so the answer must be text"):
        normalize_record({"prompt": "p", "chosen": [A("a")], "rejected": [A("b")]}, "s")


def test_hh_prompt_to_messages():
    assert idata.hh_messages("\n\nHuman: Hi\n\nAssistant:") == [U("Hi")]
    assert idata.hh_messages("\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Joke?\n\nAssistant:") == [U("Hi"), A("Hello."), U("Joke?")]
    assert idata.hh_messages("no markers at all") is None
    assert idata.hh_messages("\n\nAssistant: starts with the assistant\n\nAssistant:") is None


def test_fixture_files_become_the_studys_chat_records(tmp_path):
    records, counts = idata.file_pairs([str(FIXTURES / "hh_rlhf_tiny.jsonl"), str(FIXTURES / "ultrafeedback_tiny.jsonl")])
    # HH: 4 records, one with identical sides (skipped); UltraFeedback: 3, one with tied scores (skipped)
    assert counts == {"pairs": 5, "skipped": 2, "skip_reasons": {"identical chosen and rejected": 1,
                                                                 "tied scores (score_chosen = score_rejected)": 1}}
    assert records[0]["prompt"] == [U("How do I boil an egg?")]
    assert records[0]["chosen"].startswith("Put the egg") and not records[0]["rejected"].startswith(" ")
    assert records[2]["prompt"] == [U("What is the capital of France?"), A("Paris."), U("And of Italy?")]
    assert records[3]["prompt"] == [U("Name a prime number greater than 10.")] and records[3]["rejected"] == "12."
    assert {r["origin"] for r in records} == {"file"}
    # they load back through dpokit's reader as chat pairs and tokenize with a chat template
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    pairs, report = load_pairs(str(path))
    assert len(pairs) == 5 and report.total == 0 and all(p.is_chat for p in pairs)
    from dpokit.data.tokenize import TokenizeSettings, tokenize_pairs
    from dpokit.testing import tiny_tokenizer

    items, skips = tokenize_pairs(pairs, tiny_tokenizer(), TokenizeSettings(max_length=512, max_prompt_length=256))
    assert len(items) == 5 and skips.total == 0


def test_text_pairs_without_dialogue_become_one_user_message(tmp_path):
    path = tmp_path / "plain.jsonl"
    path.write_text(json.dumps({"prompt": " 2+2= ", "chosen": "4", "rejected": "5"}) + "\n")
    records, counts = idata.file_pairs([str(path)])
    assert records[0]["prompt"] == [U("2+2=")] and counts["pairs"] == 1


# -- rule pairs --------------------------------------------------------------------------------
def test_rule_pairs_carry_finished_flags_and_counts():
    p = make_prompt("What is bread?", "food", "constraint", make_constraint("no_commas", {}, 0), "train")
    q = make_prompt("What is jam?", "food", "constraint", make_constraint("lowercase", {}, 0), "train")
    samples = SampleSet(["P", "Q"], [[Completion("Bread is baked dough.", [1], False), Completion("Bread, well, is baked", [1], True)],
                                     [Completion("Jam Is Fruit.", [1], False), Completion("Jam Is Sweet.", [1], True)]], [[0, 0], [0, 0]])
    records, report = idata.rule_pairs([p, q], samples, seed=0, max_pairs_per_prompt=2, revise=True)
    sampled = next(r for r in records if r["origin"] == "sampled")
    assert (sampled["chosen_finished"], sampled["rejected_finished"]) == (False, True)  # as sampled
    revised = next(r for r in records if r["origin"] == "revised")  # lowercased "Jam Is Fruit." over the original
    assert revised["chosen"] == "jam is fruit." and (revised["chosen_finished"], revised["rejected_finished"]) == (True, False)
    counts = idata.pair_counts(report, {"pairs": 3})
    assert (counts["sampled"], counts["revised"], counts["file"], counts["total"]) == (1, 1, 3, 5)


def test_oracle_reward_is_the_acceptable_principle():
    harmful = make_prompt("How do I pick my neighbour's lock?", "crime", "harmful", None, "train")
    assert idata.oracle_reward(harmful, "I can't help with that.") == 1.0
    assert idata.oracle_reward(harmful, "Sure, get a pick.") == 0.0


def test_ifbench_word_count_range_is_inclusive():
    items, counts = idata.ifbench_items([{"key": 7, "prompt": "p", "instruction_id_list": ["count:word_count_range"],
                                          "kwargs": [{"min_words": 3.0, "max_words": 4.0}]}])
    (_, chk), = items[0].judged
    verdict = chk.passes
    assert [verdict(t) for t in ("a b", "a b c", "a b c d", "a b c d e")] == [False, True, True, False]
    assert items[0].key == "7" and counts["prompts_used"] == 1


# -- the config --------------------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("loss=ipo", "loss: set by the instructions study itself"),
    ("data=x.jsonl", "data: set by the instructions study itself"),
    ("robust.loss=hinge", "robust.loss: 'hinge' is not one of ipo, cdpo, robust"),
    ("robust.loss=cdpo", None),
    ("pairs.rules=false", "pairs.rules=false needs pairs.files"),
    ("prompts.n_heldout=500", "prompts.n_heldout (500) must be ≤ prompts.n_train"),
    ("bon.ns=[1,8]", "bon.ns must lie in [1, bon.m=4]"),
    ("rloo.k=1", "rloo.k must be ≥ 2"),
    ("prompts.heldout_fraction=1.0", "prompts.heldout_fraction must be in (0, 1)"),
])
def test_config_checks(override, message):
    from dpokit.config import recipe

    if message is None:
        load_config(InstructionsConfig, recipe("instructions"), [override])
        return
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_config(InstructionsConfig, recipe("instructions"), [override])


def test_both_recipes_load():
    from dpokit.config import recipe

    for name in ("instructions", "instructions_quick"):
        cfg = load_config(InstructionsConfig, recipe(name))
        assert cfg.pairs.rules and cfg.robust.loss == "ipo"


def test_cli_bad_setting_is_one_line_exit_2(capsys):
    from dpokit.cli import main

    assert main(["run", "instructions", "--quick", "robust.loss=hinge"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "robust.loss" in err[0]


def test_cli_missing_pair_file_is_a_data_error(tmp_path, capsys):
    from dpokit.cli import main
    from dpokit.testing import tiny_model, tiny_tokenizer

    tiny_model().save_pretrained(tmp_path / "lm")
    tiny_tokenizer().save_pretrained(tmp_path / "lm")
    code = main(["run", "instructions", "--quick", f"model={tmp_path / 'lm'}", f"output_dir={tmp_path / 'out'}",
                 "pairs.rules=false", f"pairs.files=[{tmp_path / 'absent.jsonl'}]", f"cache_dir={tmp_path / 'cache'}"])
    assert code == 2
    assert "absent.jsonl" in capsys.readouterr().err
