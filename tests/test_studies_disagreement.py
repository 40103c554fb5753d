"""`dpokit study disagreement` and `dpokit study cycles` end to end on a tiny random model
(plumbing and relations that hold whatever the numbers), the multi-rater data builders by hand,
and loss=panel trained from multi-rater records through TrainConfig."""

import json
import math
import random

import pytest

from dpokit.studies import panel_data as pd
from dpokit.studies.raters import Panel


def _rows():
    return [{"prompt": "p", "texts": ["good film", "bad", "good film ", "an awful, dull movie"], "finished": [True, False, True, True],
             "scores": {"sentiment": [0.5, -0.5, 0.5, -0.8], "brevity": [-2.0, -1.0, -2.0, -4.0]}}]


def test_panel_records_all_distinct_pairs_with_votes_and_truth():
    panel = Panel.from_counts({"sentiment": 2, "brevity": 1}, temperature=0.0)
    std = pd.fit_standardizer(_rows(), panel.criteria)
    records, counts = pd.panel_records(_rows(), panel, std, seed=0)
    # 6 pairs of 4 texts, one of them identical after stripping ("good film" twice)
    assert counts["pairs"] == 5 and counts["identical_skipped"] == 1 and counts["ties_broken"] == 0
    first = records[0]  # "good film" vs "bad": sentiment prefers it (2 votes), brevity the shorter "bad"
    assert (first["chosen"], first["rejected"]) == ("good film", "bad")
    assert first["votes"] == {"sentiment-1": "chosen", "sentiment-2": "chosen", "brevity-1": "rejected"}
    assert (first["chosen_finished"], first["rejected_finished"]) == (True, False)
    # "good film" vs "an awful, dull movie": better and shorter → unanimous
    unanimous = [r for r in records if pd.is_unanimous(r)]
    assert counts["unanimous"] == len(unanimous) and any(r["rejected"] == "an awful, dull movie" for r in unanimous)
    # z: sentiment mean −0.075 over the four texts
    assert std.mean["sentiment"] == pytest.approx(-0.075)


def test_utility_records_orient_by_u_and_drop_votes():
    recs = [{"prompt": "p", "chosen": "x", "rejected": "y", "votes": {"a": "chosen"}, "tie_broken": False,
             "z_chosen": {"s": 1}, "z_rejected": {"s": 2}, "utility_chosen": 0.1, "utility_rejected": 0.4, "p_mix": 0.7,
             "chosen_finished": True, "rejected_finished": False},
            {"prompt": "p", "chosen": "u", "rejected": "v", "votes": {"a": "chosen"}, "tie_broken": False,
             "z_chosen": {}, "z_rejected": {}, "utility_chosen": 0.2, "utility_rejected": 0.2, "p_mix": 0.5,
             "chosen_finished": True, "rejected_finished": True}]
    out, ties = pd.utility_records(recs)
    assert ties == 1 and len(out) == 1 and "votes" not in out[0]
    r = out[0]
    assert (r["chosen"], r["rejected"], r["utility_chosen"], r["p_mix"], r["chosen_finished"]) == ("y", "x", 0.4, pytest.approx(0.3), False)


def test_loss_panel_trains_from_multi_rater_records(tmp_path):
    """TrainConfig loss=panel reads the raters' votes: a unanimous record carries loss (ln 2 / n at
    the start), a split one none; the step's mean is over the pairs of the step."""
    from dpokit.config import TrainConfig
    from dpokit.testing import tiny_model, tiny_tokenizer
    from dpokit.train.loop import train

    tiny_model().save_pretrained(tmp_path / "lm")
    tiny_tokenizer().save_pretrained(tmp_path / "lm")
    recs = [{"prompt": "a", "chosen": "xx", "rejected": "yy", "votes": {"r1": "chosen", "r2": "chosen"}},
            {"prompt": "b", "chosen": "zz", "rejected": "ww", "votes": {"r1": "chosen", "r2": "rejected"}}]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    cfg = TrainConfig(model=str(tmp_path / "lm"), data=str(data), loss="panel", batch_size=2, max_steps=1, lr=1e-6,
                      output_dir=str(tmp_path / "run"), progress=False, eval_fraction=0.0, save_every=0)
    result = train(cfg, log=lambda *_: None, force=True)
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    # (ln 2 / 2 + 0) / 2 pairs
    assert first["loss"] == pytest.approx(math.log(2) / 4, abs=1e-5)
    assert result.summary["steps"] == 1


# -- end to end on a tiny model ------------------------------------------------------------------------
def _toy_reward(texts):
    return [sum(t.encode()) % 200 / 100 - 1 for t in texts]


@pytest.fixture
def tiny_study(tmp_path, monkeypatch):
    from dpokit.eval import rewards
    from dpokit.testing import tiny_model, tiny_tokenizer

    tiny_model().save_pretrained(tmp_path / "lm")
    tiny_tokenizer().save_pretrained(tmp_path / "lm")
    monkeypatch.setitem(rewards.REWARDS, "toy", _toy_reward)
    common = [f"model={tmp_path / 'lm'}", "reward=toy", f"runs_dir={tmp_path / 'runs'}", f"cache_dir={tmp_path / 'cache'}",
              "progress=false", "lr=1e-3"]
    return tmp_path, lambda name, *extra: ["study", name, "--quick", f"output_dir={tmp_path / name}", *common, *extra]


def check_disagreement(out: dict) -> None:
    """Relations that hold whatever the numbers (shared with the real-model quick test)."""
    rows = {r["method"]: r for r in out["rows"]}
    extra = out["extra"]
    assert set(rows) <= {"majority", "soft", "panel", "utility"} and {"majority", "soft"} <= set(rows)
    assert rows["majority"]["train_records"] == rows["soft"]["train_records"] == extra["data"]["pairs"]
    if "panel" in rows:
        assert rows["panel"]["train_records"] == extra["data"]["unanimous"] > 0
    else:
        assert extra["data"]["unanimous"] == 0 and "panel" in extra["skipped_methods"]
    optimum = {r["method"]: r["agreement"] for r in extra["optimum"]}
    # every annotator at one temperature: the panel optimum is ΔU/T, the soft optimum logit(P_mix)
    assert optimum["panel"]["utility"]["share"] == 1.0
    assert optimum["soft"]["p_mix"]["share"] == 1.0
    n = extra["heldout_pairs"]
    for r in list(rows.values()) + extra["optimum"]:
        for target in ("sentiment", "brevity", "formality", "utility", "p_mix"):
            a = r["agreement"][target]
            assert a["n"] <= n and (a["share"] is None or 0.0 <= a["share"] <= 1.0)
    weights = extra["panel"]["weights"]
    assert weights == pytest.approx({"sentiment": 0.6, "brevity": 0.2, "formality": 0.2})


def check_cycles(out: dict) -> None:
    extra = out["extra"]
    for rho, d in extra["data"].items():
        assert d["audit_matches"] and d["audit"]["prompts_with_cycles"] == d["planned_cycles"] == math.floor(float(rho) * d["prompts"] + 0.5)
        assert d["audit"]["unanimous"] == 0 and d["audit"]["contradictions"] == 0 and d["records"] == 3 * d["prompts"]
    assert extra["reference_styles"]["confidence"] == 0.0
    for r in out["rows"]:
        st = r["styles"]
        assert st["triples"] == extra["heldout"]["triples"] - extra["heldout"]["unstyled"]
        # margins come from per-completion log-probs: around a triple they sum to 0
        assert st["cycle_residual"] < 1e-2
        assert r["population"]["C>A"] == pytest.approx((1 + r["rho"]) / 3)


def test_disagreement_and_cycles_end_to_end_on_a_tiny_model(tiny_study):
    from dpokit.cli import main

    root, argv = tiny_study
    # the quick recipes at toy size, with every method and a transitive and a cyclic rate
    assert main(argv("disagreement", "disagreement.methods=[majority,soft,panel,utility]")) == 0
    out = json.loads((root / "disagreement" / "disagreement.json").read_text())
    check_disagreement(out)
    assert {p.suffix for p in (root / "disagreement").glob("disagreement.*")} == {".json", ".md", ".png"}
    md = (root / "disagreement" / "disagreement.md").read_text()
    assert "Most consistent with the mixture's utility U" in md
    # the votes are drawn from one seed: a second invocation with --resume trains nothing
    assert main(argv("disagreement", "disagreement.methods=[majority,soft,panel,utility]", "--resume")) == 0
    again = json.loads((root / "disagreement" / "disagreement.json").read_text())
    assert len(again["extra"]["reused_runs"]) == len(out["rows"]) and again["rows"] == out["rows"]

    assert main(argv("cycles", "cycles.rhos=[0.0,1.0]")) == 0
    cyc = json.loads((root / "cycles" / "cycles.json").read_text())
    check_cycles(cyc)
    assert {(r["rho"], r["method"]) for r in cyc["rows"]} == {(0.0, "dpo"), (0.0, "soft"), (1.0, "dpo"), (1.0, "soft")}
    assert "audit = plan" in (root / "cycles" / "cycles.md").read_text()


@pytest.mark.parametrize("override, says", [
    ("disagreement.methods=[majority,vote]", "disagreement.methods"),
    ("disagreement.temperature=0", "disagreement.temperature"),
    ("disagreement.panel={sentiment: 0, brevity: 0, formality: 0}", "at least one annotator"),
    ("calibration.samples_per_prompt=0", "calibration.samples_per_prompt"),
])
def test_disagreement_config_refusals(override, says, capsys):
    from dpokit.cli import main

    assert main(["study", "disagreement", "--quick", override]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("override, says", [
    ("cycles.rhos=[0.5,1.5]", "cycles.rhos"),
    ("cycles.methods=[panel]", "cycles.methods"),
    ("calibration.samples_per_prompt=4", "must be 3"),
])
def test_cycles_config_refusals(override, says, capsys):
    from dpokit.cli import main

    assert main(["study", "cycles", "--quick", override]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1
