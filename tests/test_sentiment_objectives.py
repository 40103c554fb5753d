"""The sentiment study trains KTO and RRHF from its own samples: the data each one gets (by hand)
and the study end to end on a tiny model (the objective really trained is the one asked for)."""

import json

import pytest

from dpokit.eval.policy_eval import SampleSet
from dpokit.generate import Completion
from dpokit.tasks.sentiment_pairs import kto_records, ranked_records


def test_kto_records_are_the_pairs_unpaired():
    pairs = [{"prompt": "p", "chosen": "great", "rejected": "fine", "chosen_finished": True, "rejected_finished": False},
             {"prompt": "p", "chosen": "great", "rejected": "awful"},
             {"prompt": "p", "chosen": "fine", "rejected": "awful"}]
    got = [(r["completion"], r["label"], r["completion_finished"]) for r in kto_records(pairs)]
    # "great" desirable once (repeat dropped); "fine" undesirable in pair 1 and desirable in
    # pair 3: both kept; "awful" undesirable once.
    assert got == [("great", True, True), ("fine", False, False), ("awful", False, True), ("fine", True, True)]


def test_ranked_records_keep_distinct_samples_and_skip_all_tie_prompts():
    c = lambda text: Completion(text, [1, 2], True)  # noqa: E731
    samples = SampleSet(
        ["a", "b", "c"],
        [[c("x"), c("y"), c(" x "), c("z")], [c("u"), c("v")], [c("same"), c("same ")]],
        [[0.5, -0.2, 0.9, 0.1], [0.30, 0.33], [0.0, 0.8]],
    )
    records, skipped = ranked_records(samples, min_gap=0.05)
    # prompt a: " x " repeats "x" (its first score kept); prompt b: 0.03 apart < min_gap, a tie;
    # prompt c: one distinct text, nothing to rank.
    assert records == [{"prompt": "a", "responses": ["x", "y", "z"], "scores": [0.5, -0.2, 0.1]}]
    assert skipped == 2


@pytest.mark.parametrize("objective, data, metric", [("kto", "kto.jsonl", "kto/z0"), ("rrhf", "rrhf.jsonl", "rrhf/rank")])
def test_study_trains_the_objective_asked_for(tiny_dirs, tmp_path, objective, data, metric):
    from dpokit.cli import main

    out = tmp_path / objective
    argv = ["run", "sentiment", "--quick", f"model={tiny_dirs / 'lm'}", f"objective={objective}", f"output_dir={out}",
            f"cache_dir={tmp_path / 'cache'}", "progress=false", "prompts.n_train=8", "prompts.n_heldout=4",
            "pairs.max_new_tokens=8", "max_length=96"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["objective"] == objective and summary["loss"] is None
    records = [json.loads(line) for line in (out / data).read_text().splitlines()]
    counts = summary["pairs"]
    assert len(records) == counts[f"{objective}_records"] > 0
    if objective == "kto":  # every pair's two sides, repeats once
        pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
        assert {(r["completion"], r["label"]) for r in records} == {(p[s], s == "chosen") for p in pairs for s in ("chosen", "rejected")}
    else:
        assert counts["rrhf_records"] + counts["rrhf_prompts_skipped"] == 8
    rows = [json.loads(line) for line in (out / "policy" / "metrics.jsonl").read_text().splitlines()]
    assert any(metric in r for r in rows)  # the trainer ran this objective's loss
    assert json.loads((out / "policy" / "final" / "train_summary.json").read_text())["steps"] >= 1
