"""RRHF end to end: ranked records validated, each response tokenized as a pair's completion,
the batched step equal to the loss computed response by response, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dpokit.config import TrainConfig
from dpokit.data.ranked import normalize_ranked, tokenize_ranked
from dpokit.data.records import DataError, PreferencePair, SkipPair
from dpokit.data.tokenize import TokenizeSettings, tokenize_pair
from dpokit.logprobs import logps_from_logits
from dpokit.losses_unpaired import rrhf_loss
from dpokit.testing import tiny_model, tiny_tokenizer
from dpokit.train.step import rrhf_step


@pytest.mark.parametrize("raw, field, reason", [
    ({"responses": ["a", "b"], "scores": [1, 0]}, "prompt", "missing"),
    ({"prompt": "q", "responses": ["a"], "scores": [1]}, "responses", "at least 2 responses"),
    ({"prompt": "q", "responses": ["a", "b"], "scores": [1]}, "scores", "1 scores for 2 responses"),
    ({"prompt": "q", "responses": ["a", "b"], "scores": [1, float("nan")]}, "scores[1]", "finite number"),
    ({"prompt": "q", "responses": ["a", "b"], "scores": [True, 0]}, "scores[0]", "finite number"),
    ({"prompt": "q", "responses": ["a", ["b"]], "scores": [1, 0]}, "responses[1]", "must be text"),
    ({"prompt": [{"role": "user", "content": "q"}], "responses": ["a", [{"role": "user", "content": "b"}]], "scores": [1, 0]},
     "responses[1]", "must start with an assistant message"),
])
def test_malformed_records_name_the_field(raw, field, reason):
    with pytest.raises(DataError) as err:
        normalize_ranked(raw, "rrhf.jsonl:3")
    assert err.value.field == field and reason in str(err.value)


@pytest.mark.parametrize("raw, reason", [
    ({"prompt": "q", "responses": ["a", " \u200b"], "scores": [1, 0]}, "empty response"),
    ({"prompt": "q", "responses": ["same", " same "], "scores": [1, 0]}, "all responses identical"),
])
def test_content_problems_are_skips(raw, reason):
    with pytest.raises(SkipPair, match=reason):
        normalize_ranked(raw, "rrhf.jsonl:4")


def _records():
    raw = [{"prompt": "Say hi", "responses": ["hi!", "go away", "hello there, friend"], "scores": [1.0, 0.0, 2.0]},
           {"prompt": [{"role": "user", "content": "2+2?"}], "responses": ["4", "5"], "scores": [1, 0]}]
    return [normalize_ranked(r, f"f:{i}") for i, r in enumerate(raw)]


def test_each_response_is_tokenized_as_a_pair_completion():
    tok, settings = tiny_tokenizer(), TokenizeSettings(max_length=128, max_prompt_length=64)
    recs = _records()
    items, report = tokenize_ranked(recs, tok, settings)
    assert report.total == 0 and [len(i.response_ids) for i in items] == [3, 2]
    for rec, item in zip(recs, items):
        for k, response in enumerate(rec.responses):
            other = rec.responses[(k + 1) % len(rec.responses)]
            pair = tokenize_pair(PreferencePair(rec.prompt, response, other, rec.source), tok, settings, 0)
            assert item.prompt_ids == pair.prompt_ids and item.response_ids[k] == pair.chosen_ids
        assert item.scores == rec.scores


def test_the_batched_step_equals_the_loss_response_by_response():
    """K = 3 and K = 2 in one padded batch against each (prompt, response) scored alone with full
    logits: the same log-probs (fp32 sums, 1e-4 relative), hence the same RRHF loss."""
    tok, settings = tiny_tokenizer(), TokenizeSettings(max_length=128, max_prompt_length=64)
    items, _ = tokenize_ranked(_records(), tok, settings)
    model, pad = tiny_model(vocab_size=len(tok)), tok.eos_token_id
    cfg = TrainConfig(rrhf_rank_weight=100.0)
    with torch.no_grad():
        losses, sums = rrhf_step(model, items, pad, cfg)
        expected = []
        for item in items:
            lp, n = [], []
            for r in item.response_ids:
                ids = torch.tensor([item.prompt_ids + r])
                labels = torch.tensor([[-100] * len(item.prompt_ids) + r])
                out = logps_from_logits(model(input_ids=ids).logits, labels)
                lp.append(float(out.logps[0]))
                n.append(int(out.counts[0]))
            total, _, _ = rrhf_loss(torch.tensor([lp]), torch.tensor([n]), torch.tensor([list(item.scores)]), rank_weight=100.0)
            expected.append(float(total[0]))
    assert losses.tolist() == pytest.approx(expected, rel=1e-4)
    assert sums.counts["rrhf/rank"] == 2


def test_the_rrhf_command_trains_and_refuses_bad_records(tmp_path, capsys):
    from dpokit.cli import main

    tiny_model().save_pretrained(tmp_path / "lm")
    tiny_tokenizer().save_pretrained(tmp_path / "lm")
    data = Path(__file__).resolve().parents[1] / "examples" / "rrhf.jsonl"
    args = ["rrhf", f"model={tmp_path / 'lm'}", f"data={data}", "max_steps=2", "progress=false"]
    assert main([*args, f"output_dir={tmp_path / 'run'}"]) == 0
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["split"] for x in lines] == ["train", "train", "eval"] and all("rrhf/rank" in x for x in lines)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "responses": ["a", "b"], "scores": [1, 0]}\n{"prompt": "q", "responses": ["a", "b"], "scores": [1]}\n')
    capsys.readouterr()
    assert main(["rrhf", f"model={tmp_path / 'lm'}", f"data={bad}", f"output_dir={tmp_path / 'bad'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.jsonl:2" in err and "scores" in err
