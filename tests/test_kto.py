"""KTO end to end: its records (validated, paired with mismatched partners), its start at λ/2,
its reference point over the whole step (accumulation = one batch), the eq. 8 check, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dpokit.data.records import DataError
from dpokit.data.unpaired import as_pairs, load_labelled, normalize_labelled
from dpokit.testing import tiny_model, tiny_tokenizer
from dpokit.train.loop import Trainer
from dpokit.train.prepare import PreparedData

from test_train_loop import assert_same_grads, grads_seen_by_optimizer, make_cfg, tiny_pairs


@pytest.mark.parametrize("raw, field, reason", [
    ({"prompt": "q", "completion": "a"}, "label", "expected true (desirable) or false (undesirable), got null"),
    ({"prompt": "q", "completion": "a", "label": "false"}, "label", "got str"),
    ({"prompt": "q", "completion": "a", "label": 1}, "label", "got int"),
    ({"completion": "a", "label": True}, "prompt", "missing"),
    ({"prompt": "q", "label": True}, "completion", "missing"),
    ({"prompt": "q", "completion": [{"role": "assistant", "content": "a"}], "label": True}, "completion", "must be text"),
    ({"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "user", "content": "a"}], "label": True},
     "completion", "must start with an assistant message"),
    ({"prompt": "q", "completion": "a", "label": True, "completion_finished": "no"}, "completion_finished", "got str"),
])
def test_malformed_records_name_the_field(raw, field, reason):
    with pytest.raises(DataError) as err:
        normalize_labelled(raw, "kto.jsonl:7")
    assert err.value.source == "kto.jsonl:7" and err.value.field == field and reason in str(err.value)


def test_content_skips_are_counted_and_kinds_not_mixed(tmp_path):
    path = tmp_path / "kto.jsonl"
    rows = [{"prompt": "q1", "completion": "good", "label": True}, {"prompt": "q2", "completion": " \u200b ", "label": False},
            {"prompt": "q3", "completion": "bad", "label": False}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records, report = load_labelled(path)
    assert [r.completion for r in records] == ["good", "bad"] and [r.desirable for r in records] == [True, False]
    assert report.total == 1 and "empty completion" in report.counts_line()
    chat = {"prompt": [{"role": "user", "content": "q4"}], "completion": "x", "label": True}
    path.write_text("".join(json.dumps(r) + "\n" for r in rows + [chat]))
    with pytest.raises(DataError, match="chat messages record in a file whose first record .* is text"):
        load_labelled(path)  # every record must be able to pair with every other


@pytest.mark.parametrize("n", [2, 3, 5])
def test_each_record_is_paired_with_another_records_completion(n):
    records = [normalize_labelled({"prompt": f"q{i}", "completion": f"a{i}", "label": i % 2 == 0}, f"f:{i}") for i in range(n)]
    pairs, desirable = as_pairs(records, seed=0)
    assert [p.prompt for p in pairs] == [f"q{i}" for i in range(n)] and [p.chosen for p in pairs] == [f"a{i}" for i in range(n)]
    assert all(p.rejected != p.chosen for p in pairs)  # never its own completion
    assert sorted(p.rejected for p in pairs) == sorted(p.chosen for p in pairs)  # every completion used once
    assert desirable == [i % 2 == 0 for i in range(n)]
    assert as_pairs(records, seed=0) == (pairs, desirable)  # fixed by the seed: the reference cache stays valid


def _kto_trainer(tmp_path, n=8, labels=None, **kw):
    items = tiny_pairs(n)  # chosen slot = own completion, rejected slot = a mismatched one
    labels = labels or {i: i % 2 == 0 for i in range(n)}
    data = PreparedData(items, [], train_labels=labels)
    logs = []
    cfg = make_cfg(tmp_path, objective="kto", **kw)
    return Trainer(cfg, model=tiny_model(), tokenizer=tiny_tokenizer(), data=data, log=logs.append), logs


def test_kto_starts_at_half_lambda(tmp_path):
    trainer, _ = _kto_trainer(tmp_path, max_steps=1, batch_size=4, kto_desirable_weight=1.2, kto_undesirable_weight=1.0)
    good = [trainer.data.train_labels[i] for i in trainer.order.indices(0)]
    record = trainer.train_step(0)
    assert 0 < sum(good) < len(good)  # the step holds both kinds
    assert record["loss"] == pytest.approx(sum(0.6 if g else 0.5 for g in good) / len(good), abs=1e-6)  # λ/2 each
    assert record["kto/z0"] == pytest.approx(0.0, abs=1e-5)
    assert record["rewards/desirable"] == pytest.approx(0.0, abs=1e-5)


def _move_away_from_reference(trainer) -> None:
    """The same change to both runs after their references were cached: the policy perturbed
    (non-trivial log-ratios) and the reference's mismatched log-probs lowered by 2 nats, so from
    the first step on the policy is above the reference on mismatched pairs and z0 > 0."""
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.01)
    trainer.ref_train.rejected -= 2.0


@pytest.mark.parametrize("packing", [False, True])
def test_accumulation_uses_one_reference_point_for_the_whole_step(tmp_path, packing):
    """7 examples as micro-batches of 3 + 3 + 1 against one batch of 7: z0 is formed from all
    seven mismatched pairs before any loss (a per-micro-batch z0, TRL's trap, differs here).
    Compared on the first step's gradient (see test_train_loop: Adam amplifies 1e-7 differences)."""
    kw = dict(max_steps=1, packing=packing)
    a, _ = _kto_trainer(tmp_path / "a", n=7, batch_size=3, grad_accum=3, **kw)
    b, _ = _kto_trainer(tmp_path / "b", n=7, batch_size=9, grad_accum=1, **kw)
    for t in (a, b):
        _move_away_from_reference(t)
    (ra,), (ga,) = grads_seen_by_optimizer(a, 1)
    (rb,), (gb,) = grads_seen_by_optimizer(b, 1)
    assert rb["kto/z0"] > 0.1  # the reference point matters in this step
    assert_same_grads(ga, gb)
    for key in ("loss", "kto/z0", "grad_norm", "rewards/desirable", "rewards/undesirable"):
        assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-6), key


def test_eq8_weight_check_is_reported(tmp_path):
    _, logs = _kto_trainer(tmp_path, n=8, labels={i: i < 6 for i in range(8)}, max_steps=1)  # 6 desirable, 2 undesirable
    assert any("6 desirable / 2 undesirable" in line and "outside [1, 4/3]" in line for line in logs)
    _, logs = _kto_trainer(tmp_path / "ok", n=8, max_steps=1)
    assert any("weights within eq. 8's range" in line for line in logs)


def test_the_kto_command_trains_and_refuses_bad_records(tmp_path, capsys):
    from dpokit.cli import main

    tiny_model().save_pretrained(tmp_path / "lm")
    tiny_tokenizer().save_pretrained(tmp_path / "lm")
    data = Path(__file__).resolve().parents[1] / "examples" / "kto.jsonl"
    args = ["kto", "--config", "kto", f"model={tmp_path / 'lm'}", f"data={data}", "max_steps=2", "progress=false",
            f"cache_dir={tmp_path / 'cache'}"]
    assert main([*args, f"output_dir={tmp_path / 'run'}"]) == 0
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["split"] for x in lines] == ["train", "train", "eval"] and all("kto/z0" in x for x in lines)
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "completion": "a", "label": true}\n{"prompt": "q", "completion": "b", "label": "yes"}\n')
    capsys.readouterr()
    assert main(["kto", f"model={tmp_path / 'lm'}", f"data={bad}", f"output_dir={tmp_path / 'bad'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.jsonl:2" in err and "label" in err
