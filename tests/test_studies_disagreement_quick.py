"""`dpokit study disagreement --quick` and `dpokit study cycles --quick` end to end on the bundled
model, with the relations that must hold whatever the numbers (the measured values belong in the
full runs' reports, not here). The cycles study runs one method (soft labels) to keep the suite's
real-model time small; every method is covered on a tiny model in test_studies_disagreement.py."""

import json

import pytest
from test_studies_disagreement import check_cycles, check_disagreement

pytestmark = pytest.mark.slow


def test_quick_disagreement_and_cycles(real_model_dir, tmp_path):
    from dpokit.cli import main

    common = [f"runs_dir={tmp_path / 'runs'}", "progress=false"]
    assert main(["study", "disagreement", "--quick", f"output_dir={tmp_path / 'disagreement'}", *common]) == 0
    out = json.loads((tmp_path / "disagreement" / "disagreement.json").read_text())
    check_disagreement(out)
    rows = {r["method"]: r for r in out["rows"]}
    assert set(rows) | set(out["extra"]["skipped_methods"]) == {"majority", "soft", "panel"}  # the quick recipe's
    for r in rows.values():
        assert r["point"]["n"] == 6 and r["train_steps"] == 2
        # 6 held-out prompts × 3 calibration samples: at most 18 pairs carry a margin
        assert 0 < r["calibration_gap"]["n"] <= 18
    # VADER varies on real text: the sentiment annotators' criterion is measured, not n/a
    assert rows["majority"]["agreement"]["sentiment"]["n"] > 0

    assert main(["study", "cycles", "--quick", f"output_dir={tmp_path / 'cycles'}", "cycles.methods=[soft]", *common]) == 0
    cyc = json.loads((tmp_path / "cycles" / "cycles.json").read_text())
    check_cycles(cyc)
    assert {(r["rho"], r["method"]) for r in cyc["rows"]} == {(1.0, "soft")}
    assert cyc["extra"]["data"]["1"]["planned_cycles"] == cyc["extra"]["data"]["1"]["prompts"] > 0
