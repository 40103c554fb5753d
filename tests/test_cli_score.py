"""The command line on a tiny local model: dpo / sft runs, resume, scoring output, config
errors."""

import json

import pytest

from dpokit.cli import main
from dpokit.testing import tiny_model, tiny_tokenizer

PAIRS = [
    {"prompt": "Say hi.", "chosen": "hi there", "rejected": "no"},
    {"prompt": "Count: 1 2", "chosen": "3 4 5", "rejected": "zzz"},
    {"prompt": "Colour of sky?", "chosen": "blue", "rejected": "a rather long and wrong answer"},
    {"prompt": "2+2=", "chosen": "4", "rejected": "5"},
    {"prompt": "Be kind.", "chosen": "I will.", "rejected": "Never."},
    {"prompt": "Greet me", "chosen": "Hello!", "rejected": "Go away."},
]


@pytest.fixture()
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("DPOKIT_CACHE", str(tmp_path / "cache"))
    model_dir = tmp_path / "tiny"
    tiny_model().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    return tmp_path, model_dir, data


def common(tmp_path, model_dir, data, out):
    return [f"model={model_dir}", f"data={data}", f"output_dir={tmp_path / out}", "progress=false", "eval_fraction=0"]


def test_dpo_then_score(setup):
    tmp_path, model_dir, data = setup
    assert main(["dpo", *common(tmp_path, model_dir, data, "run"), "max_steps=4", "lr=5e-3", "batch_size=3", "beta=0.5"]) == 0
    final = tmp_path / "run" / "final"
    assert (final / "model.safetensors").exists() and (final / "dpokit_config.yaml").exists()
    out = tmp_path / "scores.jsonl"
    assert main(["score", "--model", str(final), "--ref", str(model_dir), "--data", str(data), "--out", str(out), "--beta", "0.5"]) == 0
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert [r["source"] for r in rows] == [f"pairs.jsonl:{i}" for i in range(1, 7)]  # input order
    for r in rows:
        h = (r["policy_chosen_logp"] - r["ref_chosen_logp"]) - (r["policy_rejected_logp"] - r["ref_rejected_logp"])
        assert r["margin"] == pytest.approx(0.5 * h, abs=1e-5)
        assert r["correct"] == (r["margin"] > 0)
        assert r["chosen_tokens"] > 0 and r["rejected_tokens"] > 0
    summary = json.loads((tmp_path / "scores.jsonl.summary.json").read_text())  # <out>.summary.json, as the README says
    assert summary["pairs"] == 6
    assert summary["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / 6)
    assert summary["accuracy"] >= 0.5  # trained on these very pairs
    # Chosen tokens: byte tokenizer, one token per byte, + EOS.
    assert rows[0]["chosen_tokens"] == len("hi there") + 1


def test_score_model_against_itself_has_zero_margins(setup):
    tmp_path, model_dir, data = setup
    out = tmp_path / "self.jsonl"
    main(["score", "--model", str(model_dir), "--ref", str(model_dir), "--data", str(data), "--out", str(out)])
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert all(r["margin"] == 0.0 and not r["correct"] for r in rows)
    assert all(r["policy_chosen_logp"] < 0 for r in rows)


def test_sft_resume_continues_the_run(setup):
    tmp_path, model_dir, data = setup
    args = common(tmp_path, model_dir, data, "sft") + ["max_steps=4", "save_every=2", "lr=1e-3", "batch_size=2"]
    assert main(["sft", *args]) == 0
    metrics = tmp_path / "sft" / "metrics.jsonl"
    first = [json.loads(l)["loss"] for l in metrics.read_text().splitlines()]
    assert main(["sft", *args, "--resume"]) == 0  # resumes from checkpoint-000002
    again = [json.loads(l)["loss"] for l in metrics.read_text().splitlines()]
    assert again == pytest.approx(first, rel=1e-6)
    assert len(again) == 4


def test_config_errors_are_clear(setup, capsys):
    tmp_path, model_dir, data = setup
    assert main(["dpo", "bta=0.1"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key(s): bta" in err and "beta" in err
    assert main(["dpo", "loss=dpoo"]) == 2
    assert "valid: cdpo, dpo" in capsys.readouterr().err
    assert main(["sft", "--config", "dpo"]) == 2  # the packaged dpo recipe


def test_bad_data_names_file_line_and_field(setup, tmp_path, capsys):
    _, model_dir, _ = setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(PAIRS[0]) + "\n" + json.dumps({"prompt": "x", "chosen": 3, "rejected": "y"}) + "\n")
    code = main(["dpo", f"model={model_dir}", f"data={bad}", f"output_dir={tmp_path / 'x'}", "progress=false"])
    assert code == 2
    err = capsys.readouterr().err
    assert "dpokit: data error:" in err and "bad.jsonl:2: field 'chosen'" in err
    assert not (tmp_path / "x" / "final").exists()


def test_score_prints_skips_and_writes_the_summary_beside_out(setup, tmp_path, capsys):
    _, model_dir, _ = setup
    data = tmp_path / "three.jsonl"
    records = [PAIRS[0], {"prompt": "x", "chosen": "\u200b", "rejected": "y"}, PAIRS[1]]  # line 2: invisible only
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "scores.jsonl"
    assert main(["score", "--model", str(model_dir), "--ref", str(model_dir), "--data", str(data), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "data: 1 skipped (1 empty completion), 0 truncated" in stdout
    assert "scored 2 pairs (1 skipped)" in stdout
    summary = json.loads((tmp_path / "scores.jsonl.summary.json").read_text())
    assert summary["pairs"] == 2
    assert summary["skipped"]["loading"]["skipped"] == {"empty completion": {"count": 1, "examples": ["three.jsonl:2"]}}


def test_score_zero_skips_printed_and_nothing_usable_is_a_data_error(setup, tmp_path, capsys):
    _, model_dir, data = setup
    out = tmp_path / "s.jsonl"
    assert main(["score", "--model", str(model_dir), "--ref", str(model_dir), "--data", str(data), "--out", str(out)]) == 0
    assert "data: 0 skipped, 0 truncated" in capsys.readouterr().out
    useless = tmp_path / "useless.jsonl"
    useless.write_text(json.dumps({"prompt": "a", "chosen": "b<|im_end|>", "rejected": "c"}) + "\n")
    assert main(["score", "--model", str(model_dir), "--ref", str(model_dir), "--data", str(useless), "--out", str(tmp_path / "u.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "dpokit: data error: useless.jsonl: no usable pairs (1 skipped (1 field 'chosen': holds special-token text '<|im_end|>'), 0 truncated)" in err.splitlines()
    assert not (tmp_path / "u.jsonl").exists()


def test_training_prints_zero_skips_and_no_usable_pairs_is_a_data_error(setup, tmp_path, capsys):
    _, model_dir, data = setup
    assert main(["sft", *common(tmp_path, model_dir, data, "sft"), "max_steps=1"]) == 0
    assert "; 0 skipped, 0 truncated" in capsys.readouterr().out
    useless = tmp_path / "useless.jsonl"
    useless.write_text(json.dumps({"prompt": "a", "chosen": "same", "rejected": "same"}) + "\n")
    assert main(["sft", *common(tmp_path, model_dir, useless, "sft2")]) == 2  # was a bare ValueError
    err = capsys.readouterr().err
    assert "dpokit: data error: useless.jsonl: no usable pairs (1 skipped (1 identical chosen and rejected), 0 truncated)" in err.splitlines()
