"""`dpokit study lowrank --quick` on the bundled model (30 layers): the relations that must hold
whatever the numbers (the numbers come from the full recipe, not from here)."""

import json

import pytest

from tests.test_study_lowrank import check_lowrank_outputs

pytestmark = pytest.mark.slow


def test_quick_lowrank_study_on_the_real_model(real_model_dir, tmp_path):
    from dpokit.cli import main

    out_dir, runs = tmp_path / "lowrank", tmp_path / "runs"
    # one rank and one layer group (the recipe's r=2 is covered on a tiny model in test_study_lowrank.py)
    assert main(["study", "lowrank", "--quick", f"output_dir={out_dir}", f"runs_dir={runs}", "probe.ranks=[1]",
                 "progress=false"]) == 0
    out = check_lowrank_outputs(out_dir, runs, n_layers=30, heldout=6)
    rows = {r["probe"]: r for r in out["rows"]}
    assert list(rows) == ["lora-r1", "lora-top-third-r1"]
    # by hand for SmolLM2-135M (hidden 576, 3 KV heads of 64, MLP 1536): per layer and rank,
    # q 576+576, k 576+192, v 576+192, o 576+576, gate 576+1536, up 576+1536, down 1536+576
    per_layer = 1152 + 768 + 768 + 1152 + 2112 + 2112 + 2112
    assert rows["lora-r1"]["params_saved"] == per_layer * 30
    assert rows["lora-top-third-r1"]["layers_touched"] == list(range(20, 30))
    assert rows["lora-top-third-r1"]["params_saved"] == per_layer * 10
    report = json.loads((out_dir / "inspect_full.json").read_text())
    # the full fine-tune changed every decoder layer's maps; the tied embedding is reported once
    assert {r["layer"] for r in report["weights"] if r["delta_norm"] > 0} >= set(range(30))
    assert sum(r["tied"] for r in report["weights"]) == 1
    assert report["patching"]["gap"] != 0 and report["settings"]["prompts"] == 4
