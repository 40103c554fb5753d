"""`dpokit study`: the pure parts of the noise, beta-noise, reference and calibration studies
against hand-computed numbers, the command line's refusals, and every study end to end on a
tiny random model with a toy ground truth (plumbing and relations, not measurements)."""

import json
import math

import pytest
import torch

from dpokit.studies import beta_noise, calibration, noise, reference
from dpokit.studies.common import calibration_pairs, records_digest


def _pairs(n):
    return [{"prompt": f"p{i}", "chosen": f"good {i}", "rejected": f"bad {i}", "chosen_reward": 0.5 + i / 100,
             "rejected_reward": -0.5, "chosen_finished": True, "rejected_finished": False} for i in range(n)]


# -- noise: flips, votes, which run each method is ---------------------------------------------------
def test_flip_count_rounds_half_up():
    assert [noise.flip_count(e, 10) for e in (0.0, 0.1, 0.25, 0.35, 0.4)] == [0, 1, 3, 4, 4]
    assert noise.flip_count(0.25, 2) == 1  # 0.5 rounds up (Python's round would give 0)


def test_flip_labels_flips_exactly_k_and_nests():
    recs = _pairs(10)
    out, flipped = noise.flip_labels(recs, 0.25, seed=7)
    assert len(flipped) == 3 and flipped == sorted(flipped)
    wrong = [i for i, r in enumerate(out) if r["chosen_reward"] < r["rejected_reward"]]
    assert wrong == flipped  # exactly the flipped ones now prefer the worse side
    for i in flipped:
        r, o = out[i], recs[i]
        assert (r["chosen"], r["rejected"], r["chosen_finished"], r["rejected_finished"]) == (o["rejected"], o["chosen"], False, True)
        assert r["flipped"] is True
    assert all(out[i] == recs[i] for i in range(10) if i not in flipped)
    assert recs[flipped[0]]["chosen"].startswith("good")  # the input is not modified
    # nested: the flips of a higher rate include those of a lower one; deterministic per seed
    assert set(flipped) <= set(noise.flip_labels(recs, 0.4, seed=7)[1])
    assert noise.flip_labels(recs, 0.25, seed=7)[1] == flipped
    assert noise.flip_labels(recs, 0.0, seed=7) == (recs, [])


def test_with_votes_gives_the_soft_label_to_the_trainer():
    from dpokit.train.step import target_probs

    recs = noise.with_votes(_pairs(2), 0.9)
    assert [r["votes"] for r in recs] == [[900, 100], [900, 100]]

    class Item:
        index = 0

    assert target_probs([Item()], {0: tuple(recs[0]["votes"])}).item() == pytest.approx(0.9)


def test_run_plan_at_zero_noise_is_the_plain_dpo_run():
    for m in ("dpo", "cdpo", "soft", "robust", "soft-guess"):
        assert noise.run_plan(m, 0.0, 0.5) == ("dpo", {"loss": "dpo"}, None)
    assert noise.run_plan("ipo", 0.0, 0.5) == ("ipo", {"loss": "ipo"}, None)
    # soft labels with the true rate are cdpo at that rate: the same run
    assert noise.run_plan("soft", 0.2, 0.5) == noise.run_plan("cdpo", 0.2, 0.5) == ("cdpo-ls0.2", {"loss": "cdpo", "label_smoothing": 0.2}, None)
    assert noise.run_plan("robust", 0.3, 0.5) == ("robust-ls0.3", {"loss": "robust", "label_smoothing": 0.3}, None)
    label, changes, q = noise.run_plan("soft-guess", 0.2, 0.5)
    assert (label, changes) == ("soft-q0.9", {"loss": "soft"}) and q == pytest.approx(0.9)


def test_uniform_soft_label_is_cdpo_by_hand():
    """h = ln 3, β = 1: σ(h) = 3/4, σ(−h) = 1/4; ε = 0.2: L = −0.8 ln 0.75 − 0.2 ln 0.25 = 0.507405."""
    from dpokit.losses import cdpo_loss, soft_dpo_loss

    pc, pr, rc, rr = torch.tensor([math.log(3)]), torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0])
    cdpo = cdpo_loss(pc, pr, rc, rr, beta=1.0, label_smoothing=0.2)[0]
    soft = soft_dpo_loss(pc, pr, rc, rr, beta=1.0, target_prob=torch.tensor([0.8]))[0]
    assert cdpo.item() == pytest.approx(0.507405, abs=1e-6)
    assert soft.item() == pytest.approx(cdpo.item(), abs=1e-7)


def test_soft_votes_and_cdpo_give_the_same_training_losses(tmp_path):
    """The soft-with-the-true-rate row shares cdpo's run: checked through the trainer's step
    (votes read from the file, target_probs), not only the loss functions."""
    from dpokit.config import TrainConfig
    from dpokit.data.collate import resolve_pad_id
    from dpokit.data.normalize import load_pairs
    from dpokit.data.tokenize import TokenizeSettings, tokenize_pairs
    from dpokit.reference import FrozenCopyReference
    from dpokit.testing import tiny_model, tiny_tokenizer
    from dpokit.train.prepare import _votes
    from dpokit.train.step import pairwise_step

    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in noise.with_votes(_pairs(3), 0.8)))
    pairs, _ = load_pairs(str(path))
    tok, model = tiny_tokenizer(), tiny_model()
    items, _ = tokenize_pairs(pairs, tok, TokenizeSettings(max_length=64, max_prompt_length=32))
    ref = FrozenCopyReference(model)
    with torch.no_grad():  # move the policy off the reference so that h ≠ 0
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    soft, _ = pairwise_step(model, ref, items, resolve_pad_id(tok), TrainConfig(loss="soft"), votes=_votes(pairs))
    cdpo, _ = pairwise_step(model, ref, items, resolve_pad_id(tok), TrainConfig(loss="cdpo", label_smoothing=0.2))
    dpo, _ = pairwise_step(model, ref, items, resolve_pad_id(tok), TrainConfig(loss="dpo"))
    assert torch.allclose(soft, cdpo, atol=1e-6)
    assert not torch.allclose(soft, dpo, atol=1e-4)  # h ≠ 0, so the test can tell them apart


def test_label_fit_by_hand():
    fit = noise.label_fit([1.0, -2.0, 0.5, None, -0.1, 3.0], flipped=[False, True, True, True, False, False])
    # flipped: -2 no, 0.5 yes → 1/2; clean: 1 yes, -0.1 no, 3 yes → 2/3 (the unscored pair counts nowhere)
    assert fit == {"flipped_fit": 0.5, "clean_fit": pytest.approx(2 / 3)}
    assert noise.label_fit([], []) == {"flipped_fit": None, "clean_fit": None}


def test_probe_holds_the_first_and_last_flipped_pairs():
    n, seed = 20, 3
    probe = noise.probe_indices(n, seed, size=6)
    assert len(probe) == 6 and probe == sorted(probe)
    first = noise.flip_labels(_pairs(n), 3 / n, seed)[1]  # the 3 pairs flipped first
    assert set(first) <= set(probe)
    assert not set(probe) & set(noise.flip_labels(_pairs(n), 17 / n, seed)[1]) - set(first)  # the other 3: flipped last
    assert noise.probe_indices(4, seed, size=64) == [0, 1, 2, 3]  # capped at the data


# -- calibration: ECE, reliability, confidence, both-bad ----------------------------------------------
def test_reliability_and_ece_by_hand():
    """bins of width 1/2: [0.1, 0.2] conf 0.15 freq 0.5; [0.8, 0.9, 0.95] conf 0.88333 freq 2/3;
    ECE = 2/5·0.35 + 3/5·0.216667 = 0.14 + 0.13 = 0.27."""
    bins, ece = calibration.reliability([0.1, 0.2, 0.8, 0.9, 0.95], [0, 1, 1, 1, 0], bins=2)
    assert [b["n"] for b in bins] == [2, 3]
    assert bins[0]["confidence"] == pytest.approx(0.15) and bins[0]["frequency"] == pytest.approx(0.5)
    assert bins[1]["confidence"] == pytest.approx(0.883333, abs=1e-6) and bins[1]["frequency"] == pytest.approx(2 / 3)
    assert ece == pytest.approx(0.27)
    # p = 1 falls in the last bin; a perfectly calibrated set has ECE 0; empty input: no ECE
    assert calibration.reliability([1.0, 1.0], [1, 1], bins=10) == ([{"lo": 0.9, "hi": 1.0, "n": 2, "confidence": 1.0, "frequency": 1.0}], 0.0)
    assert calibration.reliability([], [], 5) == ([], None)


def test_outcomes_pair_accuracy_and_confidence_by_hand():
    pairs = [{"a_reward": 0.5, "b_reward": 0.1}, {"a_reward": 0.1, "b_reward": 0.12}, {"a_reward": -0.3, "b_reward": 0.4},
             {"a_reward": 0.2, "b_reward": -0.2}, {"a_reward": 0.9, "b_reward": 0.0}]
    margins = [2.0, 5.0, 1.0, None, 0.0]
    hs, ys, idx, left = calibration.outcomes(margins, pairs, min_gap=0.05)
    assert (hs, ys, idx, left) == ([2.0, 1.0, 0.0], [1, 0, 1], [0, 2, 4], {"ties": 1, "unscored": 1})
    assert calibration.pair_accuracy(margins, pairs, 0.05) == pytest.approx((1 + 0 + 0.5) / 3)
    assert calibration.pair_accuracy(None, pairs, 0.05) is None
    s = calibration.confidence_summary([0.95, 0.3, 0.5], [1, 1, 0])
    # confidences 0.95, 0.7, 0.5 → mean 0.716667; accuracy (1 + 0 + ½)/3 = 0.5
    assert s["mean_confidence"] == pytest.approx(0.716667, abs=1e-6) and s["accuracy"] == pytest.approx(0.5)
    assert s["overconfidence"] == pytest.approx(0.216667, abs=1e-6) and s["confident_share"] == pytest.approx(1 / 3)


def test_calibration_of_splits_both_bad_pairs():
    pairs = [{"a_reward": -0.6, "b_reward": -0.1}, {"a_reward": -0.2, "b_reward": -0.9}, {"a_reward": 0.5, "b_reward": -0.5}]
    cal = calibration.calibration_of([-3.0, 1.0, 2.0], pairs, beta=1.0, min_gap=0.05, bins=2, bad_threshold=-0.05)
    assert cal["pairs"] == 3 and cal["both_bad"]["n"] == 2 and cal["others"]["n"] == 1
    assert cal["both_bad"]["mean_abs_gap"] == pytest.approx((0.5 + 0.7) / 2)
    expected = (calibration.sigmoid(3.0) + calibration.sigmoid(1.0)) / 2  # both right, confidences σ(3), σ(1)
    assert cal["both_bad"]["mean_confidence"] == pytest.approx(expected) and cal["both_bad"]["accuracy"] == 1.0
    assert 0 <= cal["ece"] <= 1
    assert calibration.sigmoid(-800.0) == 0.0 and calibration.sigmoid(800.0) == 1.0  # no overflow


def test_reward_drops_by_hand():
    pt = lambda r: {"reward_mean": r}
    rows = [{"beta": 0.1, "eps": 0.0, "point": pt(0.5)}, {"beta": 0.1, "eps": 0.2, "point": pt(0.3)},
            {"beta": 0.5, "eps": 0.2, "point": pt(0.1)}]
    assert beta_noise.reward_drops(rows) == {0.1: {0.2: pytest.approx(-0.2)}}  # β = 0.5 has no ε = 0 run


def test_swap_sides_and_calibration_pairs():
    from dpokit.eval.policy_eval import SampleSet
    from dpokit.generate import Completion

    swapped = reference.swap_sides(_pairs(3))
    assert [r["chosen"] for r in swapped] == ["bad 0", "bad 1", "bad 2"]
    samples = SampleSet(["p"], [[Completion("x", [1], True), Completion("y", [2], False), Completion(" x ", [3], True)]],
                        [[0.1, 0.2, 0.3]])
    recs, counts = calibration_pairs(samples)
    assert counts == {"pairs": 2, "identical_dropped": 1}
    assert [(r["chosen"], r["rejected"], r["a_reward"], r["b_reward"]) for r in recs] == [("x", "y", 0.1, 0.2), ("y", " x ", 0.2, 0.3)]
    assert records_digest(recs) == records_digest([dict(r) for r in recs]) != records_digest(recs[:1])


# -- the command line ----------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, says", [
    (["study", "nope"], "unknown study 'nope'; valid: noise, beta-noise, reference, calibration"),
    (["study", "noise", "noise.eps=[0.0,0.6]"], "noise.eps must be a non-empty list of flip rates in [0, 0.5)"),
    (["study", "noise", "noise.methods=[dpo,kto]"], "noise.methods: ['kto']"),
    (["study", "calibration", "calibration.samples_per_prompt=0"], "calibration.samples_per_prompt must be ≥ 2"),
    (["study", "reference", "study.references=[base,best]"], "study.references: ['best']"),
    (["study", "noise", "--quick", "--config", "study_noise"], "--quick picks the study's quick recipe"),
    (["study", "noise", "study_noise", "--config", "study_noise"], "two configs given"),
    (["study", "beta-noise", "study.betas=[0.0]"], "study.betas must be a non-empty list of values > 0"),
    (["study", "noise", "objective=kto"], "objective: set by the"),  # each run's objective is the study's
])
def test_bad_study_input_is_one_line_and_exit_2(argv, says, capsys):
    from dpokit.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1


# -- end to end on a tiny model -------------------------------------------------------------------------
def _toy_reward(texts):
    """A deterministic score in [-1, 1) of a text's bytes: varied for random text, unlike VADER."""
    return [sum(t.encode()) % 200 / 100 - 1 for t in texts]


@pytest.fixture
def tiny_study(tmp_path, monkeypatch):
    from dpokit.eval import rewards
    from dpokit.testing import tiny_model, tiny_tokenizer

    tiny_model().save_pretrained(tmp_path / "lm")
    tiny_tokenizer().save_pretrained(tmp_path / "lm")
    monkeypatch.setitem(rewards.REWARDS, "toy", _toy_reward)
    common = [f"model={tmp_path / 'lm'}", "reward=toy", f"runs_dir={tmp_path / 'runs'}", f"cache_dir={tmp_path / 'cache'}",
              "progress=false", "lr=1e-3", "keep_models=false"]
    return tmp_path, lambda name, *extra: ["study", name, "--quick", f"output_dir={tmp_path / name}", *common, *extra]


def test_every_study_end_to_end_on_a_tiny_model(tiny_study):
    from dpokit.cli import main

    root, argv = tiny_study
    assert main(argv("noise")) == 0
    out = json.loads((root / "noise" / "noise.json").read_text())
    rows = {(r["eps"], r["method"]): r for r in out["rows"]}
    n = rows[0.0, "dpo"]["pairs"]
    assert {r["flipped"] for r in out["rows"] if r["eps"] == 0.25} == {noise.flip_count(0.25, n)}
    # at ε = 0 every method that is told a flip rate is the plain DPO run; soft (true rate) is cdpo's run
    assert {rows[0.0, m]["run"] for m in ("dpo", "cdpo", "soft", "soft-guess")} == {rows[0.0, "dpo"]["run"]}
    assert rows[0.25, "soft"]["run"] == rows[0.25, "cdpo"]["run"] != rows[0.25, "dpo"]["run"]
    assert rows[0.25, "soft-guess"]["loss"] == "soft" and rows[0.25, "soft-guess"]["assumed_eps"] == 0.125
    for r in out["rows"]:
        assert 0 <= r["point"]["win_rate"] <= 1 and math.isfinite(r["point"]["kl"]) and r["point"]["n"] == 6
    assert rows[0.0, "dpo"]["flipped_fit"] is None and rows[0.25, "dpo"]["flipped_fit"] is not None
    assert {p.suffix for p in (root / "noise").glob("noise.*")} == {".json", ".md", ".png"}
    assert not list((root / "runs").glob("*/final/*.safetensors"))  # keep_models=false: DPO weights gone

    # beta-noise and calibration reuse the noise runs where (β, ε) coincide
    assert main(argv("beta-noise", "--resume")) == 0
    bn = json.loads((root / "beta-noise" / "beta-noise.json").read_text())
    same = {r["run"] for r in bn["rows"] if r["beta"] == 0.1}
    assert same == {rows[0.0, "dpo"]["run"], rows[0.25, "dpo"]["run"]} and same <= set(bn["extra"]["reused_runs"])
    assert main(argv("calibration", "--resume")) == 0
    cal = json.loads((root / "calibration" / "calibration.json").read_text())
    assert len(cal["extra"]["reused_runs"]) == 4 == len(cal["rows"])  # no training at all
    for r in cal["rows"]:
        c = r["calibration"]
        assert 0 <= c["ece"] <= 1 and c["pairs"] + c["left_out"]["ties"] + c["left_out"]["unscored"] == cal["extra"]["calibration_pairs"]
        assert c["both_bad"]["n"] + c["others"]["n"] == c["pairs"]

    assert main(argv("reference", "--resume")) == 0
    ref = {r["reference"]: r for r in json.loads((root / "reference" / "reference.json").read_text())["rows"]}
    assert ref["base"]["run"] == rows[0.0, "dpo"]["run"]  # the noise study's ε = 0 run
    assert ref["base"]["kl_to_own_reference"] == ref["base"]["kl_to_base"]
    assert [ref[n]["reference_point"]["setting"] for n in ("sft", "skewed")] == ["on chosen", "on rejected"]
    for name in ("sft", "skewed"):
        assert ref[name]["reference_point"]["method"] == "sft" and ref[name]["kl_to_own_reference"] is not None
        assert ref[name]["gain_over_reference"] == pytest.approx(ref[name]["point"]["reward_mean"] - ref[name]["reference_point"]["reward_mean"])
    assert len(list((root / "runs").glob("ref-*/final/*.safetensors"))) == 2  # references are kept
    # the reference study's own runs skip the calibration margins (it never reads them); the shared base run has them
    stored = {d.name: json.loads((d / "frontier_run.json").read_text())["result"] for d in (root / "runs").iterdir()
              if (d / "frontier_run.json").exists()}
    own = [r for n, r in stored.items() if n.startswith(("ref-", "dpo-from-"))]
    assert len(own) == 4 and all(r["margins"] is None for r in own)
    assert len(stored[ref["base"]["run"]]["margins"]) == cal["extra"]["calibration_pairs"]

    # a second invocation with --resume trains nothing
    assert main(argv("noise", "--resume")) == 0
    again = json.loads((root / "noise" / "noise.json").read_text())
    assert sorted(again["extra"]["reused_runs"]) == sorted({r["run"] for r in out["rows"]})
    assert [r["point"] for r in again["rows"]] == [r["point"] for r in out["rows"]]


def test_ci_errors_and_text():
    from dpokit.studies.common import ci_errors, ci_text

    pts = [{"reward_mean": 0.2, "reward_ci95": [0.0, 0.5]}, {"reward_mean": 0.1, "reward_ci95": [None, float("nan")]}]
    assert ci_errors(pts) == [[pytest.approx(0.2), 0.0], [pytest.approx(0.3), 0.0]]  # a bound at 0.0 is a bound
    assert ci_text(pts[0]) == "0.200 [0.00, 0.50]" and ci_text(None) == "n/a"


def test_the_full_recipes_share_every_setting_a_shared_run_is_keyed_by():
    """The noise, beta-noise, calibration and reference recipes reuse each other's runs only if
    every setting in a run's key agrees (training, evaluation, calibration, sampling); the
    disagreement and cycles recipes train their own data but share the setup's samples and the
    budget (docs/studies.md), so they agree on those settings too."""
    import dataclasses

    from dpokit.config import load_config, recipe
    from dpokit.studies import study_module

    own = {"output_dir", "study", "noise", "disagreement", "cycles"}
    shared = {}
    for name in ("noise", "beta-noise", "calibration", "reference", "disagreement", "cycles"):
        cfg = load_config(study_module(name).CONFIG, recipe(f"study_{name.replace('-', '_')}"))
        shared[name] = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in own}
    assert all(s == shared["noise"] for s in shared.values()), {n: s for n, s in shared.items() if s != shared["noise"]}
    assert (shared["noise"]["max_steps"], shared["noise"]["eval"]["samples_per_prompt"]) == (20, 1)
    # beta-noise, calibration and reference score their runs on a probe of NoiseStage's default size
    assert load_config(noise.NoiseConfig, recipe("study_noise")).noise.probe_pairs == noise.NoiseStage().probe_pairs
