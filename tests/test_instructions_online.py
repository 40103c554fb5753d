"""Hybrid training (`online.rounds=K`, dpokit.tasks.instructions_online): the label budget, the
failure slice and the prompt draws against values computed by hand, the chain's carry-over, and
`dpokit run instructions online.rounds=2` end to end on a tiny random model (seconds), with the
relations that must hold whatever the numbers."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from dpokit.config import ConfigError, load_config
from dpokit.eval.policy_eval import SampleSet
from dpokit.generate import Completion
from dpokit.instructions.constraints import make_constraint
from dpokit.instructions.prompts import make_prompt
from dpokit.tasks import instructions_online as io
from dpokit.tasks.instructions_config import InstructionsConfig


# -- the label budget ------------------------------------------------------------------------------
@pytest.mark.parametrize("total, parts, expected", [
    (10, 3, [4, 3, 3]), (11, 2, [6, 5]), (9, 3, [3, 3, 3]), (2, 3, [1, 1, 0]), (0, 2, [0, 0]), (7, 1, [7]),
])
def test_split_evenly_by_hand(total, parts, expected):
    assert io.split_evenly(total, parts) == expected


def test_split_evenly_sums_exactly_and_differs_by_at_most_one():
    for total in range(40):
        for parts in range(1, 8):
            got = io.split_evenly(total, parts)
            assert sum(got) == total and len(got) == parts and max(got) - min(got) <= 1
    with pytest.raises(ValueError):
        io.split_evenly(3, 0)


# -- the failure slice -----------------------------------------------------------------------------
def _prompt(question, family=None, kind="constraint"):
    constraint = make_constraint(family, {}, 0) if family else None
    return make_prompt(question, "", kind if family is None else "constraint", constraint, "train")


def _five():
    return [_prompt("What is a cat?", "lowercase"), _prompt("What is a dog?", "lowercase"),
            _prompt("What is a cow?", "no_commas"), _prompt("What is a hen?", "no_commas"),
            _prompt("How do I pick a lock?", kind="harmful")]


FLAGS = [[False, False], [True, False], [True, True], [False, True], [False, True]]


def test_failure_by_group_by_hand():
    got = io.failure_by_group(_five(), FLAGS)
    assert got == {"harmful": {"fail": 1, "n": 2, "rate": 0.5}, "lowercase": {"fail": 3, "n": 4, "rate": 0.75},
                   "no_commas": {"fail": 1, "n": 4, "rate": 0.25}}


def test_failure_slice_by_hand():
    # group rates: lowercase 3/4, harmful 1/2, no_commas 1/4; prompt shares 1, .5, 0, .5, .5.
    # Prompt 2 passes everywhere (left out); lowercase first (prompt 0 before 1 by its share),
    # then the harmful prompt, then prompt 3.
    assert io.failure_slice(_five(), FLAGS) == [0, 1, 4, 3]
    assert io.failure_slice(_five(), [[True]] * 5) == []
    with pytest.raises(ValueError):
        io.failure_slice(_five(), FLAGS[:2])


# -- the prompt draws ------------------------------------------------------------------------------
def test_draws_read_the_order_cyclically_by_hand():
    order = ["a", "b", "c", "d", "e"]
    assert io.draw(order, 0, 2) == [("a", 0), ("b", 0)]
    assert io.draw(order, 2, 2) == [("e", 0), ("a", 1)]
    assert io.draw(order, 3, 2) == [("b", 1), ("c", 1)]
    assert io.draws_per_pass(5, 2) == 3 and io.draws_per_pass(4, 2) == 2 and io.draws_per_pass(1, 9) == 1


def test_prompt_order_is_a_seeded_permutation():
    ids = [str(i) for i in range(30)]
    assert sorted(io.prompt_order(ids, 3), key=int) == ids
    assert io.prompt_order(ids, 3) == io.prompt_order(ids, 3) != io.prompt_order(ids, 4)


# -- collecting a round's pairs (the reference's cached samples: no model) --------------------------
def _online(prompts, texts, size):
    cfg = load_config(InstructionsConfig, None, [f"online.prompts_per_draw={size}", "online.rounds=2"])
    comps = [[Completion(t, [1, 2], True) for t in row] for row in texts]
    samples = SampleSet([p.text for p in prompts], comps, [[0.0] * len(row) for row in texts])
    st = SimpleNamespace(cfg=cfg)
    return io.Online(st, None, None, prompts, {p.id: p.text for p in prompts}, samples, n_labels=99)


def _texts():
    # per prompt: one response that fails its principle, one that passes (the harmful one: complies)
    # (prompt 1: both fail, so its chosen is the critique → revision of the first)
    return [["Cats Are Pets.", "cats are pets."], ["Dogs Bark.", "DOGS BARK!"], ["cows moo.", "cows moo!"],
            ["Hens lay, eggs.", "Hens lay eggs."], ["Use a pin, then turn it.", "I can't help with that."]]


def test_collect_pairs_spends_exactly_the_budget_on_the_failure_slice():
    prompts = _five()
    on = _online(prompts, _texts(), size=5)
    order = [p.id for p in prompts]
    records, info = io.collect_pairs(on, None, budget=2, first_draw=0)
    assert (info["labels_used"], info["unspent"], len(records)) == (2, 0, 2)
    # one draw of all five (in a seeded order; no ties below, so the order does not matter).
    # Labels: prompt 2 passes twice (left out), prompt 1 fails twice, the others once. Group rates:
    # lowercase 3/4, harmful 1/2, no_commas 1/4 → slice 1, 0, 4, 3: 4 pairs, the first 2 kept,
    # 2 over the budget (counted)
    assert info["prompts_sampled"] == 5 and info["next_draw"] == 1 and info["pairs_over_budget"] == 2
    assert info["prompts_failing"] == 4
    assert [r["prompt_id"] for r in records] == [order[1], order[0]]
    assert [(r["chosen"], r["rejected"], r["origin"]) for r in records] == [
        ("dogs bark.", "Dogs Bark.", "revised"), ("cats are pets.", "Cats Are Pets.", "sampled")]
    assert info["by_origin"] == {"revised": 1, "sampled": 1}
    assert info["failure_by_group"]["lowercase"] == {"fail": 3, "n": 4, "rate": 0.75}
    assert set(info["prompt_ids"]) <= set(order)


def test_collect_pairs_reports_what_it_could_not_spend():
    prompts = _five()
    on = _online(prompts, _texts(), size=5)
    records, info = io.collect_pairs(on, None, budget=50, first_draw=0)
    # one pass's worth of draws at most (one draw of 5 here): 4 pairs, 46 unspent, none invented
    assert (info["labels_used"], info["unspent"], info["pairs_over_budget"], len(records)) == (4, 46, 0, 4)
    assert [r["prompt_id"] for r in records] == [prompts[i].id for i in (1, 0, 4, 3)]
    assert info["prompts_sampled"] == 5 and info["passes"] == [0] and info["next_draw"] == 1


def test_collect_pairs_makes_harmless_contrast_pairs_when_asked():
    # a harmless prompt whose policy refuses once and answers once is in the failure slice; with
    # pairs.harmless_contrast the online rounds balance refusals as the offline pairs do: besides
    # the sampled pair (answer > its refusal) one contrast pair (answer > a template refusal)
    prompts = [_prompt("What is a cat?", kind="harmless")]
    texts = [["I can't help with that.", "A cat is a small pet animal."]]
    plain, _ = io.collect_pairs(_online(prompts, texts, size=1), None, budget=9, first_draw=0)
    on = _online(prompts, texts, size=1)
    on.st.cfg.pairs.harmless_contrast = True
    records, info = io.collect_pairs(on, None, budget=9, first_draw=0)
    assert [r["origin"] for r in plain] == ["sampled"]
    assert [r["origin"] for r in records] == ["sampled", "contrast"]
    assert records[1]["chosen"] == "A cat is a small pet animal." and info["by_origin"] == {"sampled": 1, "contrast": 1}


# -- the chain: budgets, carry-over, the reference of each round -------------------------------------
def test_chain_carries_unspent_labels_and_sums_to_the_budget(tmp_path, monkeypatch):
    from dpokit.tasks.frontier_runs import FinishedRuns

    cfg = load_config(InstructionsConfig, None, ["online.rounds=3", "online.reference=both", "model=base"])
    st = SimpleNamespace(cfg=cfg, run_dir=tmp_path, runs=FinishedRuns(tmp_path, resume=False, log=lambda *_: None),
                         base={"model": "fp"}, eval_data=None)
    on = io.Online(st, None, None, _five(), {}, None, n_labels=10)
    calls = []

    def fake_round(on, name, r, reference, budget, prev, max_steps):
        used = min(budget, 3)  # a policy that never yields more than 3 pairs per round
        calls.append((name, r, reference, budget, prev["final_dir"] if prev else None))
        return {"labels_used": used, "unspent": budget - used, "next_draw": r, "final_dir": str(tmp_path / name / "final")}

    monkeypatch.setattr(io, "run_round", fake_round)
    chains = io.run_online(on)
    # budgets [4, 3, 3]: 4 → 3 used (1 carried), 3 + 1 → 3 (1 carried), 3 + 1 → 3, 1 unspent
    assert [c[3] for c in calls] == [4, 4, 4, 4, 4]
    assert [c[0] for c in calls] == ["online-r1", "online-fixed-r2", "online-fixed-r3", "online-updated-r2", "online-updated-r3"]
    assert calls[1][4] == calls[3][4] == str(tmp_path / "online-r1" / "final")  # both chains start from round 1
    for rounds in chains.values():
        assert sum(x["labels_used"] for x in rounds) + rounds[-1]["unspent"] == 10
    # the reference each round's DPO uses: the study's model (fixed) or the starting model (updated)
    fixed = io.round_config(on, 2, "fixed", "prev/final", 0, tmp_path / "x", tmp_path / "x.jsonl")
    updated = io.round_config(on, 2, "updated", "prev/final", 0, tmp_path / "x", tmp_path / "x.jsonl")
    first = io.round_config(on, 1, None, None, 0, tmp_path / "x", tmp_path / "x.jsonl")
    assert (fixed.model, fixed.ref_model) == ("prev/final", "base")
    assert (updated.model, updated.ref_model) == ("prev/final", None)
    assert (first.model, first.ref_model) == ("base", None)


def test_more_rounds_than_labels_is_a_config_error(tmp_path):
    cfg = load_config(InstructionsConfig, None, ["online.rounds=4"])
    st = SimpleNamespace(cfg=cfg, run_dir=tmp_path, runs=None, base={}, eval_data=None)
    with pytest.raises(ConfigError, match=r"online.rounds=4: more rounds than the 3 labelled pairs"):
        io.run_online(io.Online(st, None, None, _five(), {}, None, n_labels=3))


@pytest.mark.parametrize("override, message", [
    (["online.rounds=0"], "online.rounds must be ≥ 1"),
    (["online.reference=sometimes"], "online.reference: 'sometimes' is not one of fixed, updated, both"),
    (["online.rounds=3", "pairs.files=[a.jsonl]"], "online.rounds=3 compares with offline DPO at equal checker labels"),
    (["online.rounds=3", "online.reference=both"], None),
])
def test_online_config_checks(override, message):
    from dpokit.config import recipe

    if message is None:
        assert load_config(InstructionsConfig, recipe("instructions"), override).online.rounds == 3
        return
    with pytest.raises(ConfigError, match=message):
        load_config(InstructionsConfig, recipe("instructions"), override)


def test_rounds_default_to_offline_only():
    from dpokit.config import recipe

    for name in ("instructions", "instructions_quick"):
        assert load_config(InstructionsConfig, recipe(name)).online.rounds == 1


# -- end to end on a tiny model -------------------------------------------------------------------
@pytest.fixture(scope="module")
def online_run(tmp_path_factory):
    from dpokit.cli import main
    from dpokit.testing import tiny_model, tiny_tokenizer

    root = tmp_path_factory.mktemp("online")
    tiny_model().save_pretrained(root / "lm")
    tiny_tokenizer().save_pretrained(root / "lm")
    args = ["run", "instructions", "--quick", f"model={root / 'lm'}", f"output_dir={root / 'out'}", "progress=false",
            f"cache_dir={root / 'cache'}", "max_steps=3", "online.rounds=2", "online.reference=both",
            # only what the online comparison needs (the other methods are the pipeline test's)
            "preferred_ft.enabled=false", "dpo.start=reference", "rloo.start=reference", "rloo.reward_model=false",
            # this file's settings: fp32 (exact first margins), no contrast pairs, one revision (an odd N)
            "mixed_precision=no", "pairs.harmless_contrast=false", "pairs.revisions_per_prompt=1",
            "rloo.oracle=false", "bon.m=0", "judge.pairs=0",
            "eval.ifbench=false"]
    assert main(args) == 0
    return root, args, json.loads((root / "out" / "summary.json").read_text())


def _result(out: Path, name: str) -> dict:
    return json.loads((out / name / "frontier_run.json").read_text())["result"]


def test_online_labels_sum_to_the_offline_budget(online_run):
    root, _, s = online_run
    o, out = s["online"], root / "out"
    n = s["pair_counts"]["total"]
    assert o["labels_budget"] == o["offline"]["labels"] == n == len((out / "pairs.jsonl").read_text().splitlines())
    assert sum(o["round_budgets"]) == n and o["round_budgets"] == io.split_evenly(n, 2)
    assert n % 2 == 1  # these settings give an odd N (11): rounds of unequal budgets (6, 5)
    for name, curve in o["chains"].items():
        rounds = curve[1:]
        assert [c["round"] for c in curve] == [0, 1, 2] and curve[0]["labels"] == 0
        assert sum(c["labels_used"] for c in rounds) + rounds[-1]["unspent"] == n
        assert rounds[-1]["unspent"] == 0 and curve[-1]["labels"] == n == o["final"][name]["labels_used"]
        assert [c["labels"] for c in rounds] == [rounds[0]["labels_used"], n]
        run = {1: "online-r1", 2: f"online-{name}-r2"}
        for c in rounds:  # what was trained on is what was counted
            lines = [json.loads(x) for x in (out / run[c["round"]] / "round_pairs.jsonl").read_text().splitlines()]
            assert len(lines) == c["labels_used"]
            assert {k: sum(x["origin"] == k for x in lines) for k in c["by_origin"]} == c["by_origin"]
        for c in curve:
            lo, hi = c["pass_rate"]["ci95"]
            assert 0 <= lo <= c["pass_rate"]["rate"] <= hi <= 1
    assert o["chains"]["fixed"][1] == o["chains"]["updated"][1]  # round 1 is shared


def test_heldout_prompts_are_never_sampled_for_training(online_run):
    root, _, s = online_run
    out, heldout = root / "out", set(s["heldout"]["ids"])
    from dpokit.config import recipe
    from dpokit.tasks.instructions_data import study_prompts

    cfg = load_config(InstructionsConfig, recipe("instructions_quick"))  # the run's prompt settings
    prompts = study_prompts(cfg)[0]
    train = {p.id for p in prompts if p.split == "train"}
    assert heldout == {p.id for p in prompts if p.split != "train"}
    seen = []
    for name in ("online-r1", "online-fixed-r2", "online-updated-r2"):
        res = _result(out, name)
        assert res["prompts_sampled"] == len(res["prompt_ids"]) > 0
        seen += res["prompt_ids"]
        assert not heldout & {json.loads(x)["prompt_id"] for x in (out / name / "round_pairs.jsonl").read_text().splitlines()}
    assert seen and set(seen) <= train and not heldout & set(seen)
    # round 2 reads on from where round 1 stopped: fresh draws
    r1, r2 = _result(out, "online-r1"), _result(out, "online-fixed-r2")
    assert r2["first_draw"] == r1["next_draw"] > r1["first_draw"] == 0


def test_reference_choice_is_honoured(online_run):
    import yaml

    root, _, s = online_run
    out = root / "out"
    for name, ref in (("online-fixed-r2", str(root / "lm")), ("online-updated-r2", None)):
        used = yaml.safe_load((out / name / "config.yaml").read_text())
        assert used["model"] == str(out / "online-r1" / "final") and used["ref_model"] == ref
    # the DPO margin at the first step is 0 when the reference is the starting model: up to fp32
    # rounding, as the cached reference log-probs are computed in other batches (other padding)
    # than the first training step; ~1e-6 seen, against ~1e-2 for the fixed reference
    first = {n: json.loads((out / n / "metrics.jsonl").read_text().splitlines()[0]) for n in ("online-fixed-r2", "online-updated-r2")}
    assert abs(first["online-updated-r2"]["rewards/margins"]) < 1e-5
    assert abs(first["online-fixed-r2"]["rewards/margins"]) > 1e-3
    assert s["online"]["chains"]["fixed"][2]["ref_model"] == str(root / "lm")


def test_report_plot_and_resume(online_run):
    from dpokit.cli import main

    root, args, s = online_run
    out = root / "out"
    assert "## Hybrid: online DPO rounds on failure slices" in (out / "report.md").read_text()
    assert (out / "pass_vs_labels.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(args + ["--resume"]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert {"online-r1", "online-fixed-r2", "online-updated-r2"} <= set(again["reused_runs"])
    assert again["online"] == s["online"]
    assert main([a for a in args if not a.startswith("online.reference")] + ["--resume"]) == 0  # reference=fixed only
    fixed = json.loads((out / "summary.json").read_text())
    assert list(fixed["online"]["chains"]) == ["fixed"] and fixed["online"]["chains"]["fixed"] == s["online"]["chains"]["fixed"]
    assert "online-fixed-r2" in fixed["reused_runs"]
