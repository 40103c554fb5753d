"""`dpokit run instructions --quick` end to end on the bundled model: every method gives its
points, evaluated the same way, with the relations that must hold whatever the numbers (the
numbers themselves are measured by the full recipe, not here). --resume, and what a changed
setting redoes, are tested on a tiny model (test_instructions_pipeline.py), not here: the real
model's time in the suite is kept to one pass."""

import json

import pytest

pytestmark = pytest.mark.slow

METHODS = ["preferred-ft", "dpo", "ipo", "rloo-rm", "rloo-oracle"]


def test_quick_instructions_on_the_bundled_model(real_model_dir, tmp_path):
    from dpokit.cli import main

    out = tmp_path / "instructions"
    assert main(["run", "instructions", "--quick", f"output_dir={out}", "progress=false"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert list(s["policy"]) == METHODS

    # pairs: sampled + revised + harmless contrast (+ files, none here) = total = the lines trained on
    c = s["pair_counts"]
    assert c["sampled"] + c["revised"] + c.get("contrast", 0) + c["file"] == c["total"] == len(
        (out / "pairs.jsonl").read_text().splitlines()) > 0
    assert c["file"] == 0 and c["rules"]["by_origin"].get("revised", 0) == c["revised"]

    # every rate a probability inside its own interval
    blocks = [s["reference"], *s["policy"].values()]
    for b in blocks:
        for r in [b["pass_rate"], *b["pass_rate_by_split"].values(), b["harmful_refusal_rate"], b["harmless_refusal_rate"],
                  b["acceptable_rate"]]:
            lo, hi = r["ci95"]
            assert 0.0 <= lo <= r["rate"] <= hi <= 1.0
    for fams in s["per_family"].values():
        assert sorted(fams) == sorted(s["per_family"]["reference"])
        for r in fams.values():
            assert r["ci95"][0] <= r["rate"] <= r["ci95"][1]

    # the same held-out prompts for every method; refusal rates over the harmful / harmless ones
    assert {p["heldout_digest"] for p in s["points"]} == {s["heldout"]["digest"]}
    k, by = s["heldout"]["samples_per_prompt"], s["heldout"]["by_split_kind"]
    for name, r in s["refusal"].items():
        assert (r["harmful"]["n"], r["harmless"]["n"]) == (by["heldout_question/harmful"] * k, by["heldout_question/harmless"] * k), name
    assert s["reference"]["pass_rate"]["n"] == (by["heldout_question/constraint"] + by["heldout_wording/constraint"]) * k

    # the checker can only pick better than the reward model among the same samples
    bon = {(p["method"], p["n"]): p for p in s["best_of_n"]}
    for n in (1, 2):
        rm, oracle = bon[("best-of-n (reward model)", n)], bon[("best-of-n (oracle)", n)]
        assert oracle["pass_rate"]["rate"] >= rm["pass_rate"]["rate"] - 1e-12
        assert oracle["acceptable_rate"]["rate"] >= rm["acceptable_rate"]["rate"] - 1e-12
    assert s["kl"]["reference"] == 0.0 and all(isinstance(v, float) for v in s["kl"].values())
    assert s["judge_agreement"]["n"] == 6 and 0 <= s["judge_agreement"]["agreement"] <= 1
    assert s["ifbench"]["prompts_used"] > 0 and s["reference"]["ifbench"]["instruction_pass"]["n"] > 0
    assert (out / "report.md").exists() and (out / "pass_vs_kl.png").exists()

    # the default recipe's structure: DPO, IPO and both RLOO runs start at Preferred-FT's point
    # (dpo.start, rloo.start); IFBench only for the reference and the methods named
    pft = [p for p in s["points"] if p["method"] == "preferred-ft"][-1]
    for method in METHODS[1:]:
        first = min((p for p in s["points"] if p["method"] == method), key=lambda p: p["step"])
        assert first["step"] == 0 and first["kl"] == pft["kl"], method
    assert sorted(m for m, b in s["policy"].items() if b.get("ifbench")) == ["dpo", "ipo"]
