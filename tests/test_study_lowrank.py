"""`dpokit study lowrank` end to end on a tiny random model with a toy ground truth: the
plumbing and the relations that hold whatever the numbers (the real model's quick run is
tests/test_study_lowrank_quick.py); plus the study's config checks."""

import itertools
import json
import math

import pytest


def check_lowrank_outputs(out_dir, runs_dir, *, n_layers: int, heldout: int) -> dict:
    """What must hold whatever the numbers: every run evaluated on the same prompts; each probe's
    adapter exactly on its layers × modules and trained; parameter counts = formula = peft's,
    growing with r; the shares recomputed from the stored per-prompt rewards; the inspection."""
    from dpokit.shift.probe_stats import per_prompt_means, share_of_gain

    out = json.loads((out_dir / "lowrank.json").read_text())
    extra, rows = out["extra"], out["rows"]
    stored = lambda run: json.loads((runs_dir / run / "frontier_run.json").read_text())["result"]
    ref = per_prompt_means(extra["reference_heldout_rewards"])
    full = per_prompt_means(stored(extra["full"]["run"])["heldout_rewards"])
    assert len(ref) == len(full) == extra["full"]["heldout_prompts"] == heldout == extra["reference"]["n"]
    assert extra["full"]["gain"] == pytest.approx(extra["full"]["point"]["reward_mean"] - extra["reference"]["reward_mean"])
    for r in rows:
        assert r["heldout_prompts"] == r["point"]["n"] == heldout, r["probe"]
        assert r["as_specified"] and r["all_trained"] and r["layers_touched"] == r["layers"], r["probe"]
        assert r["params_saved"] == r["params_formula"] == r["params_peft"] > 0, r["probe"]
        probe = per_prompt_means(stored(r["run"])["heldout_rewards"])
        again = share_of_gain(ref, probe, full)
        assert (r["share"], r["share_ci95"], r["share_note"]) == (again["share"], again["ci95"], again["note"])
        assert r["probe_gain"] == pytest.approx(r["point"]["reward_mean"] - extra["reference"]["reward_mean"])
        if r["share"] is not None:
            assert r["share"] == pytest.approx(r["probe_gain"] / extra["full"]["gain"])
    sweep = sorted((r for r in rows if r["group"] == "all"), key=lambda r: r["r"])
    assert all(a["params_saved"] < b["params_saved"] for a, b in itertools.pairwise(sweep))
    assert len({r["params_saved"] // r["r"] for r in sweep}) == 1  # proportional to r
    for r in rows:
        if r["group"] in ("attention", "mlp"):
            assert r["layers"] == list(range(n_layers)) and len(r["modules"]) < len(sweep[0]["modules"])
        elif r["group"] in ("bottom_third", "top_third"):
            assert 0 < len(r["layers"]) < n_layers and r["modules"] == sweep[0]["modules"]
    assert extra["verdict"]["label"] in ("localised", "low-rank", "spread", "undetermined") and extra["verdict"]["rule"]
    h = extra["shift"]["headline"]
    assert sum(h["energy_by_type"].values()) == pytest.approx(1.0) and sum(h["energy_by_third"].values()) == pytest.approx(1.0)
    report = json.loads((out_dir / "inspect_full.json").read_text())
    assert len(report["residual"]) == n_layers and len(report["patching"]["layers"]) == n_layers
    if h["patching_by_third"] is not None:  # the thirds' steps add up to the last layer's cumulative fraction
        assert sum(h["patching_by_third"].values()) == pytest.approx(report["patching"]["layers"][-1]["fraction"])
    assert report["settings"]["prompts"] == min(heldout, report["settings"]["prompts"])
    md = (out_dir / "lowrank.md").read_text()
    assert all(s in md for s in ("## Probes", "## Verdict", "## Where the full fine-tune's change sits"))
    assert (out_dir / "lowrank.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return out


def _toy_reward(texts):
    """A deterministic score in [-1, 1) of a text's bytes (as tests/test_studies.py)."""
    return [sum(t.encode()) % 200 / 100 - 1 for t in texts]


@pytest.fixture
def tiny_lowrank(tmp_path, monkeypatch):
    from dpokit.eval import rewards
    from dpokit.testing import tiny_model, tiny_tokenizer

    tiny_model(layers=4).save_pretrained(tmp_path / "lm")
    tiny_tokenizer().save_pretrained(tmp_path / "lm")
    monkeypatch.setitem(rewards.REWARDS, "toy", _toy_reward)
    common = [f"model={tmp_path / 'lm'}", "reward=toy", f"runs_dir={tmp_path / 'runs'}", f"cache_dir={tmp_path / 'cache'}",
              "progress=false", "lr=1e-3", "keep_models=false", f"output_dir={tmp_path / 'lowrank'}",
              "inspect.max_length=512",  # byte-level tokens: room for the prompt and its completion
              "probe.lr=1e-9"]  # probes that barely move: they must sample what the reference samples
    return tmp_path, lambda *extra: ["study", "lowrank", "--quick", *common, *extra]


def test_lowrank_study_end_to_end_on_a_tiny_model(tiny_lowrank):
    from dpokit.cli import main

    root, argv = tiny_lowrank
    assert main(argv("probe.groups=[attention,top_third]")) == 0
    out = check_lowrank_outputs(root / "lowrank", root / "runs", n_layers=4, heldout=6)
    assert [r["probe"] for r in out["rows"]] == ["lora-r1", "lora-r2", "lora-attention-r1", "lora-top-third-r1"]
    assert out["extra"]["shift"]["headline"]["patching_by_third"] is not None  # the full run moved the log-ratios
    # probe.lr = 1e-9: each probe's samples are the reference's, prompt by prompt, in the same order
    ref = out["extra"]["reference_heldout_rewards"]
    for r in out["rows"]:
        stored = json.loads((root / "runs" / r["run"] / "frontier_run.json").read_text())["result"]
        assert stored["heldout_rewards"] == ref, r["probe"]
    top = out["rows"][-1]
    assert top["layers"] == [3] and top["layers_touched"] == [3]  # L = 4: the top third is layer 3
    full_run = out["extra"]["full"]["run"]
    # keep=True: the full fine-tune's weights stay although keep_models=false ...
    weights = list((root / "runs" / full_run / "final").glob("*.safetensors"))
    assert weights
    # ... and a stored full run whose weights are gone is redone under --resume; the probes are reused
    for f in weights:
        f.unlink()
    assert main(argv("probe.groups=[attention,top_third]", "--resume")) == 0
    again = json.loads((root / "lowrank" / "lowrank.json").read_text())
    assert full_run not in again["extra"]["reused_runs"]
    assert sorted(again["extra"]["reused_runs"]) == sorted(r["run"] for r in out["rows"])
    assert [r["point"] for r in again["rows"]] == [r["point"] for r in out["rows"]]


@pytest.mark.parametrize("override, says", [
    ("lora.r=4", "lora.r must stay 0 in the low-rank study"),
    ("probe.ranks=[1,1]", "probe.ranks must be distinct LoRA ranks ≥ 1, got [1, 1]"),
    ("probe.ranks=[]", "probe.ranks must be distinct LoRA ranks ≥ 1, got []"),
    ("probe.groups=[attention,middle]", "probe.groups must be distinct names from attention, mlp, bottom_third, top_third"),
    ("probe.group_r=0", "probe.group_r must be ≥ 1, got 0"),
    ("probe.threshold=1.5", "probe.threshold must be in (0, 1]"),
    ("probe.lr=0", "probe.lr must be > 0 and finite, got 0.0"),
    ("inspect.prompts=0", "inspect.prompts must be ≥ 1, got 0"),
])
def test_bad_lowrank_settings_are_one_line_and_exit_2(override, says, capsys):
    from dpokit.cli import main

    assert main(["study", "lowrank", override]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1


def test_the_recipes_load():
    from dpokit.config import load_config, recipe
    from dpokit.studies.lowrank import LowRankConfig

    full = load_config(LowRankConfig, recipe("study_lowrank"))
    assert (full.probe.ranks, full.probe.group_r, full.max_steps) == ([1, 2, 4, 8, 16], 1, 30)
    assert full.probe.groups == ["attention", "mlp", "bottom_third", "top_third"] and math.isclose(full.probe.threshold, 0.8)
    quick = load_config(LowRankConfig, recipe("study_lowrank_quick"))
    assert (quick.probe.ranks, quick.probe.groups, quick.max_steps) == ([1, 2], ["top_third"], 2)


def test_layer_lists_in_the_report():
    from dpokit.studies.lowrank_report import _ranges, _span

    assert _ranges([8, 0, 1, 2, 5, 7]) == "0–2, 5, 7–8" and _ranges([]) == "" and _ranges([3]) == "3"
    assert _span(list(range(30)), 30) == "all" and _span(list(range(20, 30)), 30) == "20–29" and _span([3], 4) == "3"
    assert _span([0, 2], 4) == "0,2"


def test_best_group_line_is_judged_within_the_kl_budget():
    from dpokit.studies.lowrank_report import findings_md

    def row(name, share, kl):
        return {"probe": name, "group": name, "r": 1, "share": share, "share_ci95": [share - 0.1, share + 0.1],
                "point": {"kl": kl}, "params_saved": 10}

    rows = [row("lora-attention-r1", 1.8, 3.7), row("lora-top-third-r1", 1.2, 1.4)]
    decision = {"label": "localised", "firm": True, "deciding": ["lora-top-third-r1"], "rule": "r", "threshold": 0.8,
                "smallest_rank_reaching": None, "kl_budget": 1.99, "over_budget": ["lora-attention-r1"]}
    text = findings_md(decision, rows)
    assert "Best single group within the KL budget: lora-top-third-r1" in text
    assert "not counted as recovering: lora-attention-r1." in text
    # with no probe over the budget the larger share wins
    assert "budget: lora-attention-r1 with" in findings_md({**decision, "over_budget": []}, rows)
