"""One short integration test on the bundled SmolLM2-135M-Instruct: load, score 4 pairs,
2 DPO steps; the loss starts at ln 2 and the margin moves the right way."""

import json
import math

import pytest

pytestmark = pytest.mark.slow

PAIRS = [
    {"prompt": "How do I boil an egg?", "chosen": "Boil it for nine minutes, then cool it in cold water.", "rejected": "No idea."},
    {"prompt": [{"role": "user", "content": "What is the capital of France?"}],
     "chosen": [{"role": "assistant", "content": "The capital of France is Paris."}],
     "rejected": [{"role": "assistant", "content": "Why would I tell you?"}]},
    {"chosen": "\n\nHuman: Say something nice.\n\nAssistant: You are doing great today!",
     "rejected": "\n\nHuman: Say something nice.\n\nAssistant: Whatever."},
    {"prompt": "Recommend a book.", "chosen": "The Hobbit is a warm adventure many readers love.", "rejected": "Books are boring."},
]


def test_bundled_model_scores_and_trains(real_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DPOKIT_CACHE", str(tmp_path / "cache"))
    from dpokit.config import TrainConfig
    from dpokit.score import ScoreSettings, score_file
    from dpokit.train.loop import Trainer
    from dpokit.train.metrics import read_metrics

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    summary = score_file(str(real_model_dir), str(real_model_dir), str(data), str(tmp_path / "s.jsonl"), ScoreSettings(progress=False), log=lambda *a: None)
    rows = [json.loads(l) for l in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert summary["pairs"] == 4 and len(rows) == 4
    assert all(r["margin"] == 0.0 and r["ref_chosen_logp"] < 0 and r["chosen_tokens"] > 3 for r in rows)

    cfg = TrainConfig(
        model=str(real_model_dir), data=str(data), eval_fraction=0.0, max_steps=2, batch_size=4,
        lr=2e-5, beta=0.1, warmup_steps=0, schedule="constant", output_dir=str(tmp_path / "run"),
        cache_dir=str(tmp_path / "cache"), progress=False, max_length=128, max_prompt_length=64,
    )
    trainer = Trainer(cfg, log=lambda *a: None)
    trainer.fit()
    train = [r for r in read_metrics(trainer.run_dir / "metrics.jsonl") if r["split"] == "train"]
    assert train[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert train[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-3)
    assert train[1]["rewards/margins"] > 0.0  # one update on these pairs favours chosen
    assert train[1]["loss"] < math.log(2)
