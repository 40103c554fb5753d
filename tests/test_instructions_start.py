"""`dpo.start=preferred-ft` (DPO, the robust variant and the online rounds start from the
Preferred-FT model and are anchored to it), `rloo.start=preferred-ft` (RLOO too, its KL penalty
to it), `pairs.revisions_per_prompt`, `pairs.harmless_contrast`,
`eval.ifbench_methods`, `eval.kl_samples_per_prompt` and `bon.reuse_reference`, on a tiny random
model (seconds) or with the sampler replaced."""

import json
from pathlib import Path

import pytest
import yaml

from dpokit.config import ConfigError, load_config
from dpokit.tasks.instructions_config import InstructionsConfig


def _args(root, out, *extra):
    # only the runs the start touches: Preferred-FT, DPO, IPO (no RLOO, Best-of-N, judge, IFBench);
    # a large Preferred-FT lr so that its model clearly differs from the study's
    return ["run", "instructions", "--quick", f"model={root / 'lm'}", f"output_dir={out}", "progress=false",
            f"cache_dir={root / 'cache'}", "max_steps=2", "rloo.reward_model=false", "rloo.oracle=false", "bon.m=0",
            "judge.pairs=0", "eval.ifbench=false", "preferred_ft.lr=1e-3", "preferred_ft.epochs=1",
            # fp32: the start's checks are exact (DPO's first margins 0 against its own reference)
            "dpo.start=preferred-ft", "mixed_precision=no", *extra]


# the study fixture adds what else starts from Preferred-FT: RLOO on the checker (no reward model
# to train) and two online rounds, both reference chains
FROM_PFT = ("rloo.oracle=true", "rloo.start=preferred-ft", "online.rounds=2", "online.reference=both")


@pytest.fixture(scope="module")
def study(tiny_lm):
    from dpokit.cli import main

    out = tiny_lm / "out"
    assert main(_args(tiny_lm, out, *FROM_PFT)) == 0
    return out, json.loads((out / "summary.json").read_text())


def _first_train_line(run_dir: Path) -> dict:
    return next(r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r.get("split") == "train")


def test_dpo_and_the_robust_variant_start_from_preferred_ft_and_are_anchored_to_it(study):
    out, s = study
    for method in ("dpo", "ipo"):
        cfg = yaml.safe_load((out / method / "config.yaml").read_text())
        assert (cfg["model"], cfg["ref_model"]) == (str(out / "preferred-ft" / "final"), None)
        # at the first step the policy IS its reference: every implicit reward is 0, which would
        # not hold against the study's model (Preferred-FT moved away from it at lr 1e-3)
        first = _first_train_line(out / method)
        assert abs(first["rewards/chosen"]) < 1e-4 and abs(first["rewards/rejected"]) < 1e-4
    assert s["policy"]["preferred-ft"]["kl"] > 1e-3


def test_the_curve_starts_at_preferred_ft(study):
    _, s = study
    dpo = [p for p in s["points"] if p["method"] == "dpo"]
    assert [p["step"] for p in dpo] == [0, 2]
    assert dpo[0]["kl"] == s["policy"]["preferred-ft"]["kl"]
    assert dpo[0]["pass_rate"] == s["policy"]["preferred-ft"]["pass_rate"]
    assert s["policy"]["dpo"]["step"] == 2 and "from Preferred-FT" in s["policy"]["dpo"]["setting"]


def test_rloo_starts_from_preferred_ft_and_its_kl_penalty_is_to_it(study):
    out, s = study
    cfg = yaml.safe_load((out / "rloo-oracle" / "config.yaml").read_text())
    assert cfg["model"] == str(out / "preferred-ft" / "final")
    # round 1's KL to the penalty's reference is 0: that reference IS the starting policy ...
    first = json.loads((out / "rloo-oracle" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1 and first["kl"] == 0.0 and first["kl_k3"] == 0.0
    # ... and the starting policy is Preferred-FT: one RLOO round at lr 3e-5 stays at Preferred-FT's
    # held-out KL to the study's model (a run from the study's model would be near 0)
    pft_kl = s["policy"]["preferred-ft"]["kl"]
    assert abs(s["policy"]["rloo-oracle"]["kl"] - pft_kl) < 0.1 * pft_kl
    rloo = [p for p in s["points"] if p["method"] == "rloo-oracle"]
    assert [p["step"] for p in rloo] == [0, 1] and rloo[0]["kl"] == pft_kl
    assert rloo[0]["pass_rate"] == s["policy"]["preferred-ft"]["pass_rate"]
    assert s["policy"]["rloo-oracle"]["setting"] == "kl_coef=0.05, from Preferred-FT"
    assert "| rloo-oracle | " in (out / "report.md").read_text()


def test_online_rounds_start_from_preferred_ft(study):
    out, s = study
    pft = str(out / "preferred-ft" / "final")
    used = {n: yaml.safe_load((out / n / "config.yaml").read_text()) for n in ("online-r1", "online-fixed-r2", "online-updated-r2")}
    # round 1 from Preferred-FT, anchored to it (None = the starting model); fixed: Preferred-FT
    # every round; updated: the previous round's policy
    assert (used["online-r1"]["model"], used["online-r1"]["ref_model"]) == (pft, None)
    assert (used["online-fixed-r2"]["model"], used["online-fixed-r2"]["ref_model"]) == (str(out / "online-r1" / "final"), pft)
    assert (used["online-updated-r2"]["model"], used["online-updated-r2"]["ref_model"]) == (str(out / "online-r1" / "final"), None)
    first = {n: json.loads((out / n / "metrics.jsonl").read_text().splitlines()[0]) for n in used}
    assert first["online-r1"]["rewards/margins"] == 0.0 and abs(first["online-updated-r2"]["rewards/margins"]) < 1e-5
    assert abs(first["online-fixed-r2"]["rewards/margins"]) > 1e-3  # round 1 moved away from Preferred-FT
    o = s["online"]
    assert o["start"] == "preferred-ft" and o["offline"]["kl"] == s["policy"]["dpo"]["kl"]  # offline DPO: from Preferred-FT too
    for curve in o["chains"].values():
        # 0 ADDITIONAL labels at Preferred-FT's point; the rounds near its KL, not near 0
        assert curve[0]["labels"] == 0 and curve[0]["kl"] == s["policy"]["preferred-ft"]["kl"]
        assert curve[0]["pass_rate"] == s["policy"]["preferred-ft"]["pass_rate"]
        assert curve[1]["kl"] > 0.5 * curve[0]["kl"] and curve[-1]["labels"] == o["labels_budget"] == s["pair_counts"]["total"]
    assert "from Preferred-FT" in (out / "report.md").read_text().split("## Hybrid")[1]


def test_resume_redoes_dpo_when_preferred_ft_changes(study, tiny_lm):
    from dpokit.cli import main

    out, s = study
    assert main(_args(tiny_lm, out, *FROM_PFT, "--resume", "preferred_ft.lr=2e-3")) == 0
    again = json.loads((out / "summary.json").read_text())
    # Preferred-FT's settings are no part of DPO's, RLOO's or a round's own config: their keys must carry them
    assert again["reused_runs"] == []
    for method in ("dpo", "rloo-oracle"):
        assert again["policy"][method]["kl"] != s["policy"][method]["kl"]
    assert again["online"]["chains"]["fixed"][1]["kl"] != s["online"]["chains"]["fixed"][1]["kl"]
    # rpo_alpha and beta change DPO, IPO and the online rounds only: Preferred-FT (SFT, where they
    # do nothing) and RLOO are reused
    # (online.rounds=1: the rounds, redone, are not what this checks)
    assert main(_args(tiny_lm, out, *FROM_PFT, "--resume", "preferred_ft.lr=2e-3", "rpo_alpha=0.5", "beta=0.2",
                      "online.rounds=1")) == 0
    assert json.loads((out / "summary.json").read_text())["reused_runs"] == ["preferred-ft", "rloo-oracle"]


def test_revisions_per_prompt_give_more_revised_pairs(tiny_lm):
    """The same cached samples, one or three revisions per prompt: more revised pairs, the
    sampled ones unchanged."""
    from dpokit.cli import main

    counts = []
    for k in (1, 3):
        out = tiny_lm / f"rev{k}"
        # Preferred-FT only is enough to write pairs.jsonl; nothing is trained past one step
        assert main(_args(tiny_lm, out, f"pairs.revisions_per_prompt={k}", "dpo.start=reference", "max_steps=1")) == 0
        counts.append(json.loads((out / "summary.json").read_text())["pair_counts"])
    one, three = counts
    assert one["sampled"] == three["sampled"]
    assert one["revised"] < three["revised"] <= 3 * one["revised"]


def test_harmless_contrast_pairs_reach_the_pairs_file_counts_and_report(tiny_lm):
    from dpokit.cli import main

    out = tiny_lm / "contrast"
    assert main(_args(tiny_lm, out, "pairs.harmless_contrast=true", "dpo.start=reference", "max_steps=1")) == 0
    s = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    contrast = [r for r in records if r["origin"] == "contrast"]
    assert contrast and s["pair_counts"]["contrast"] == len(contrast)
    assert s["pair_counts"]["total"] == len(records)
    assert all(r["principle"] == "answer_harmless" and r["kind"] == "harmless" for r in contrast)
    assert f"+ {len(contrast)} contrast +" in (out / "report.md").read_text()


def test_ifbench_only_for_the_named_methods(tiny_lm):
    from dpokit.cli import main

    out = tiny_lm / "ifb"
    args = [a for a in _args(tiny_lm, out, "dpo.start=reference", "max_steps=1") if a != "eval.ifbench=false"]
    assert main(args + ["eval.ifbench=true", "eval.ifbench_methods=[dpo]"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["reference"]["ifbench"] is not None and s["policy"]["dpo"]["ifbench"] is not None
    assert s["policy"]["preferred-ft"]["ifbench"] is None and s["policy"]["ipo"]["ifbench"] is None
    assert "| ipo | n/a | n/a |" in (out / "report.md").read_text()


@pytest.mark.parametrize("k, expected", [(0, [["a0", "a1"], ["b0", "b1"]]), (1, [["a0"], ["b0"]]), (2, [["a0", "a1"], ["b0", "b1"]])])
def test_kl_is_estimated_from_the_first_k_samples_of_each_prompt(monkeypatch, k, expected):
    from dpokit.eval.policy_eval import SampleSet
    from dpokit.generate import Completion
    from dpokit.tasks import instructions as inst

    cfg = load_config(InstructionsConfig, None, [f"eval.kl_samples_per_prompt={k}"])
    seen = []
    monkeypatch.setattr(inst, "_kl", lambda policy, ref, tok, samples, temperature=1.0: seen.append(samples) or 0.5)
    ev = inst.Evaluator(cfg, "ref", "tok", [], [], [], [], print)
    rows = [[Completion(t, [1], True) for t in ("a0", "a1")], [Completion(t, [1], True) for t in ("b0", "b1")]]
    samples = SampleSet(["p", "q"], rows, [[1.0, 0.0], [0.0, 1.0]])
    assert ev.kl("policy", samples) == 0.5
    (got,) = seen
    assert [[c.text for c in row] for row in got.completions] == expected and got.prompts == ["p", "q"]
    assert [len(r) for r in got.rewards] == [len(r) for r in expected]


@pytest.mark.parametrize("m, reuse, asked, expected", [
    (4, False, 4, ["n0", "n1", "n2", "n3"]),   # the default: all m drawn
    (4, True, 2, ["r0", "r1", "n0", "n1"]),    # the reference's 2 first, then m - 2 new
    (2, True, None, ["r0", "r1"]),             # nothing new to draw
    (1, True, None, ["r0"]),
])
def test_best_of_n_reuses_the_references_heldout_samples(monkeypatch, m, reuse, asked, expected):
    import dpokit.generate
    from dpokit.eval.policy_eval import SampleSet
    from dpokit.generate import Completion
    from dpokit.tasks import instructions_methods as im

    cfg = load_config(InstructionsConfig, None, [f"bon.m={m}", "bon.ns=[1]", f"bon.reuse_reference={str(reuse).lower()}"])
    calls = []

    def fake(model, tok, prompts, *, n_per_prompt, seed, **kw):
        calls.append((n_per_prompt, seed))
        return [[Completion(f"n{k}", [1], True) for k in range(n_per_prompt)] for _ in prompts]

    monkeypatch.setattr(dpokit.generate, "sample_completions", fake)
    ref = SampleSet(["p", "q"], [[Completion(f"r{k}", [1], True) for k in range(2)] for _ in range(2)], [[0.0, 0.0]] * 2)
    ev = type("Ev", (), {"rendered": ["p", "q"]})()
    st = im.Study(cfg, Path("."), ev, None, {}, [], {}, ref_samples=ref)
    rows = im._bon_samples(st, "ref-model", "tok")
    assert [[c.text for c in row] for row in rows] == [expected, expected]
    assert calls == ([] if asked is None else [(asked, cfg.eval.seed + 1)])


@pytest.mark.parametrize("override, message", [
    ("dpo.start=sft", "dpo.start: 'sft' is not one of reference, preferred-ft"),
    ("preferred_ft.enabled=false", "dpo.start=preferred-ft needs the Preferred-FT run"),
    ("ref_model=some/model", "dpo.start=preferred-ft anchors DPO to the Preferred-FT model"),
    ("pairs.revisions_per_prompt=0", "pairs.revisions_per_prompt must be ≥ 1"),
    ("eval.ifbench_methods=[dpo, ppo]", "eval.ifbench_methods: ppo not among the methods"),
    ("eval.kl_samples_per_prompt=3", r"eval.kl_samples_per_prompt \(3\) must be ≤ eval.samples_per_prompt \(2\)"),
])
def test_config_checks(override, message):
    from dpokit.config import recipe

    with pytest.raises(ConfigError, match=message):
        load_config(InstructionsConfig, recipe("instructions"), ["dpo.start=preferred-ft", override])


@pytest.mark.parametrize("override, message", [
    (["rloo.start=sft"], "rloo.start: 'sft' is not one of reference, preferred-ft"),
    (["rloo.start=preferred-ft", "preferred_ft.enabled=false"], "rloo.start=preferred-ft needs the Preferred-FT run"),
    (["rloo.start=preferred-ft", "ref_model=some/model"], "rloo.start=preferred-ft anchors RLOO's KL penalty to the Preferred-FT"),
])
def test_rloo_start_config_checks(override, message):
    from dpokit.config import recipe

    with pytest.raises(ConfigError, match=message):
        load_config(InstructionsConfig, recipe("instructions"), ["dpo.start=reference", *override])


def test_online_rounds_from_preferred_ft_are_accepted():
    from dpokit.config import recipe

    cfg = load_config(InstructionsConfig, recipe("instructions"), ["dpo.start=preferred-ft", "online.rounds=3"])
    assert (cfg.dpo.start, cfg.online.rounds) == ("preferred-ft", 3)


def test_code_defaults_are_unchanged_and_the_recipe_sets_the_measured_default():
    from dpokit.config import recipe

    cfg = InstructionsConfig()  # the code's defaults: what the keys did before they existed
    assert (cfg.dpo.start, cfg.pairs.revisions_per_prompt, cfg.pairs.harmless_contrast) == ("reference", 1, False)
    assert cfg.rloo.start == "reference" and cfg.prompts.n_heldout_safety == 0
    assert cfg.eval.ifbench_methods == [] and cfg.eval.kl_samples_per_prompt == 0 and cfg.bon.reuse_reference is False
    cfg = load_config(InstructionsConfig, recipe("instructions"))  # the recipe README's numbers come from
    assert (cfg.dpo.start, cfg.rloo.start, cfg.pairs.revisions_per_prompt, cfg.pairs.harmless_contrast) == (
        "preferred-ft", "preferred-ft", 2, True)
    assert (cfg.rpo_alpha, cfg.preferred_ft.lr, cfg.mixed_precision, cfg.prompts.n_heldout_safety) == (1.0, 5e-5, "bf16", 30)
    assert (cfg.beta, cfg.robust.loss, cfg.robust.beta) == (0.1, "ipo", 0.2)  # IPO at β = 0.1 refused 28% of harmful prompts, at 0.2 48%

def test_ifbench_methods_robust_names_the_robust_variant_whatever_its_loss():
    from dpokit.config import recipe

    for loss in ("ipo", "cdpo"):  # the recipe names "robust": a changed robust.loss is no config error
        cfg = load_config(InstructionsConfig, recipe("instructions"), [f"robust.loss={loss}"])
        assert cfg.ifbench_methods() == ["dpo", loss]
    # the measured run's key named "ipo": the same list, so its runs keep their keys
    cfg = load_config(InstructionsConfig, recipe("instructions"), ["eval.ifbench_methods=[dpo, ipo]"])
    assert cfg.ifbench_methods() == ["dpo", "ipo"]
