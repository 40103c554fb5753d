"""Three quick studies (noise, beta-noise, calibration) end to end on the bundled model, sharing
one run store as the full studies do: relations that must hold whatever the numbers (the numbers
themselves are measured by the full recipes, not here). Narrowed to two trained runs to keep the
suite's real-model time small; every method, the reference study and its SFT references are
covered on a tiny model in test_studies.py (test_every_study_end_to_end_on_a_tiny_model)."""

import json
import math

import pytest

pytestmark = pytest.mark.slow


def test_quick_studies_share_runs_and_resume(real_model_dir, tmp_path):
    from dpokit.cli import main
    from dpokit.studies.noise import flip_count

    def study(name, *extra):
        argv = ["study", name, "--quick", f"output_dir={tmp_path / name}", f"runs_dir={tmp_path / 'runs'}", "progress=false"]
        assert main(argv + list(extra)) == 0
        out = json.loads((tmp_path / name / f"{name}.json").read_text())
        assert (tmp_path / name / f"{name}.png").stat().st_size > 0 and (tmp_path / name / f"{name}.md").exists()
        return out

    # two runs: soft labels at ε = 0 are plain DPO, at ε = 0.25 they are cdpo
    noise = study("noise", "noise.methods=[soft]")
    rows = {r["eps"]: r for r in noise["rows"]}
    n = rows[0.0]["pairs"]
    assert n > 0 and (rows[0.0]["flipped"], rows[0.25]["flipped"]) == (0, flip_count(0.25, n))
    assert rows[0.0]["run"].startswith("dpo-eps0-b0.1-") and rows[0.25]["run"].startswith("cdpo-ls0.25-eps0.25-b0.1-")
    for r in noise["rows"]:
        p = r["point"]
        assert -1 <= p["reward_mean"] <= 1 and math.isfinite(p["kl"]) and 0 <= p["win_rate"] <= 1 and p["n"] == 6
        assert r["heldout_pair_accuracy"] is None or 0 <= r["heldout_pair_accuracy"] <= 1

    # the plain DPO run at ε = 0 is the one the noise study trained: nothing new for beta-noise and calibration
    beta = study("beta-noise", "--resume", "study.betas=[0.1]", "study.eps=[0.0]")
    assert [r["run"] for r in beta["rows"]] == [rows[0.0]["run"]] == beta["extra"]["reused_runs"]
    cal = study("calibration", "--resume", "study.betas=[0.1]", "study.eps=[0.0]")
    assert cal["extra"]["reused_runs"] == [rows[0.0]["run"]]
    c = cal["rows"][0]["calibration"]
    assert c["ece"] is None or 0 <= c["ece"] <= 1
    assert c["pairs"] + c["left_out"]["ties"] + c["left_out"]["unscored"] == cal["extra"]["calibration_pairs"]
    assert c["both_bad"]["n"] + c["others"]["n"] == c["pairs"]

    again = study("noise", "--resume", "noise.methods=[soft]")  # nothing is trained twice
    assert sorted(again["extra"]["reused_runs"]) == sorted(r["run"] for r in noise["rows"])
    assert [r["point"] for r in again["rows"]] == [r["point"] for r in noise["rows"]]
