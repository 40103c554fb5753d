"""Completions cut at max_new_tokens (Completion.finished = False) stay unfinished end to end:
samples -> build_pairs records -> PreferencePair -> token ids without EOS, and training
scores the same tokens as the held-out KL estimate (completion_logps) does.

Ids are those of the tiny byte-level tokenizer (see tests/test_tokenize_collate.py):
letters are ord(c) - 33, <|im_end|> = 258 is EOS.
"""

import json

import pytest
import torch

from dpokit.data.collate import collate_pairs, resolve_pad_id
from dpokit.data.normalize import load_pairs
from dpokit.data.tokenize import TokenizeSettings, tokenize_pairs
from dpokit.eval.policy_eval import SampleSet, completion_logps
from dpokit.generate import Completion
from dpokit.logprobs import batch_logps
from dpokit.tasks.sentiment_pairs import build_pairs, write_jsonl
from dpokit.testing import tiny_model, tiny_tokenizer

EOS = 258


def ids(text: str) -> list[int]:
    return [ord(c) - 33 for c in text]


def done(text: str) -> Completion:
    """A completion that ended by itself: its generated ids end with EOS."""
    return Completion(text, ids(text) + [EOS], True)


def cut(text: str) -> Completion:
    """A completion that ran out of max_new_tokens: no EOS was generated."""
    return Completion(text, ids(text), False)


def samples() -> SampleSet:
    # Prompt 0: the best completion was cut, the worst finished. Prompt 1: the reverse.
    return SampleSet(
        prompts=["Hi", "Yo"],
        completions=[[cut("Great"), done("Bad"), done("Meh")], [done("Fine"), cut("Awful")]],
        rewards=[[0.9, -0.8, 0.1], [0.7, -0.9]],
    )


def test_sample_set_json_round_trip_keeps_finished():
    s = samples()
    back = SampleSet.from_json(json.loads(json.dumps(s.to_json())))
    assert back.completions == s.completions
    assert [[c.finished for c in row] for row in back.completions] == [[False, True, True], [True, False]]


def test_build_pairs_writes_finished_flags():
    records, counts = build_pairs(samples(), per_prompt=0, min_gap=0.05)
    got = [(r["chosen"], r["chosen_finished"], r["rejected"], r["rejected_finished"]) for r in records]
    assert got == [
        ("Great", False, "Bad", True),  # prompt 0, largest gap first: 1.7, 0.9, 0.8
        ("Meh", True, "Bad", True),
        ("Great", False, "Meh", True),
        ("Fine", True, "Awful", False),
    ]
    assert counts["pairs"] == 4 and counts["ties_dropped"] == 0
    assert all(type(r["chosen_finished"]) is bool and type(r["rejected_finished"]) is bool for r in records)


def test_pairs_file_round_trip_tokenizes_cut_completions_without_eos(tmp_path):
    records, _ = build_pairs(samples(), per_prompt=1, min_gap=0.05)
    pairs, report = load_pairs(write_jsonl(records, tmp_path / "pairs.jsonl"))
    assert report.total == 0
    assert [(p.chosen_finished, p.rejected_finished) for p in pairs] == [(False, True), (True, False)]
    items, _ = tokenize_pairs(pairs, tiny_tokenizer(), TokenizeSettings())
    assert (items[0].chosen_ids, items[0].rejected_ids) == (ids("Great"), ids("Bad") + [EOS])
    assert (items[1].chosen_ids, items[1].rejected_ids) == (ids("Fine") + [EOS], ids("Awful"))


def test_training_scores_the_tokens_completion_logps_scores(tmp_path):
    # The data path (records -> tokenize -> collate) and the KL estimate (completion_logps on
    # the generated ids) must score the same tokens: EOS where it was generated, none where
    # the completion was cut.
    model, tok = tiny_model(), tiny_tokenizer()
    s = samples()
    records, _ = build_pairs(s, per_prompt=1, min_gap=0.05)
    pairs, _ = load_pairs(write_jsonl(records, tmp_path / "pairs.jsonl"))
    items, _ = tokenize_pairs(pairs, tok, TokenizeSettings())
    with torch.no_grad():
        out = batch_logps(model, collate_pairs(items, resolve_pad_id(tok)))
    chosen, rejected, n_chosen, n_rejected = out.split_pairs()
    flat = completion_logps(model, tok, s)  # order: prompt 0's three, then prompt 1's two
    # pair 0 = Great (cut) vs Bad (done); pair 1 = Fine (done) vs Awful (cut)
    expected = torch.tensor([[flat[0], flat[1]], [flat[3], flat[4]]])
    assert torch.allclose(torch.stack([chosen, rejected], dim=1), expected, atol=1e-5)
    assert n_chosen.tolist() == [5, 5] and n_rejected.tolist() == [4, 5]  # "Great", "Fine"+EOS; "Bad"+EOS, "Awful"


@pytest.mark.parametrize("finished", [True, False])
def test_completion_logps_scores_eos_only_when_generated(finished):
    # One completion, scored with and without its EOS: the difference is EOS's log-prob,
    # and completion_logps picks the one the sample actually has.
    model, tok = tiny_model(), tiny_tokenizer()
    comp = done("Ok") if finished else cut("Ok")
    got = completion_logps(model, tok, SampleSet(["Hi"], [[comp]], [[0.0]]))[0]
    with torch.no_grad():
        logits = model(torch.tensor([ids("Hi") + ids("Ok") + [EOS]])).logits.log_softmax(-1)[0]
    targets = ids("Ok") + ([EOS] if finished else [])
    want = sum(float(logits[1 + k, t]) for k, t in enumerate(targets))  # "Hi" = positions 0, 1
    assert got == pytest.approx(want, abs=1e-5)
