"""`dpokit run instructions` end to end on a tiny random model (seconds): the relations that must
hold whatever the numbers, --resume, pair files, and the prompt-aware RLOO reward."""

import json
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures"
METHODS = ["preferred-ft", "dpo", "ipo", "rloo-rm", "rloo-oracle"]
RUNS = ["judge", "preferred-ft", "dpo", "ipo", "rm", "rloo-rm", "rloo-oracle", "best-of-n"]


def _args(root, out, *extra):
    return ["run", "instructions", "--quick", f"model={root / 'lm'}", f"output_dir={out}", "progress=false",
            f"cache_dir={root / 'cache'}", "dpo.points=2", "max_steps=3",
            # the methods from the study's model, as this file's relations assume (the starts: test_instructions_start*)
            "dpo.start=reference", "rloo.start=reference", *extra]


@pytest.fixture(scope="module")
def study(tiny_lm):
    from dpokit.cli import main

    out = tiny_lm / "out"
    assert main(_args(tiny_lm, out, f"pairs.files=[{FIXTURES / 'hh_rlhf_tiny.jsonl'}, {FIXTURES / 'ultrafeedback_tiny.jsonl'}]")) == 0
    return out, json.loads((out / "summary.json").read_text())


def _rates(block):
    """Every {"rate", "ci95", ...} dict inside a nested block."""
    if isinstance(block, dict):
        if "rate" in block and "ci95" in block:
            yield block
        else:
            for v in block.values():
                yield from _rates(v)
    elif isinstance(block, list):
        for v in block:
            yield from _rates(v)


def test_summary_keys_and_pair_counts(study):
    out, s = study
    for key in ("reference", "policy", "win_rate", "per_family", "refusal", "judge_agreement", "pair_counts",
                "harmful_refusal_rate", "harmless_refusal_rate", "kl", "best_of_n", "matched_kl"):
        assert key in s, key
    assert list(s["policy"]) == METHODS
    # DPO evaluated at a checkpoint and at its end; the final point is the policy's
    assert [(p["method"], p["step"]) for p in s["points"] if p["method"] == "dpo"] == [("dpo", 2), ("dpo", 3)]
    assert s["policy"]["dpo"]["step"] == 3
    c = s["pair_counts"]
    lines = (out / "pairs.jsonl").read_text().splitlines()
    assert c["sampled"] + c["revised"] + c["contrast"] + c["file"] == c["total"] == len(lines)
    origins = [json.loads(l)["origin"] for l in lines]
    assert [origins.count(o) for o in ("sampled", "revised", "contrast", "file")] == [
        c["sampled"], c["revised"], c["contrast"], c["file"]]
    assert c["contrast"] > 0  # the recipe's harmless contrast pairs
    assert c["file"] == 5 and c["files"]["skipped"] == 2  # the fixtures: 7 records, 2 counted skips
    assert c["rules"]["by_origin"] == {k: c[k] for k in ("contrast", "revised", "sampled") if c[k]}


def test_every_rate_is_a_probability_inside_its_interval(study):
    _, s = study
    rates = list(_rates([s["reference"], s["policy"], s["per_family"], s["refusal"], s["best_of_n"]]))
    assert len(rates) > 100
    for r in rates:
        if r["rate"] is None:
            continue
        lo, hi = r["ci95"]
        assert 0.0 <= lo <= r["rate"] <= hi <= 1.0
    for w in s["win_rate"].values():
        assert 0.0 <= w["vs_reference"]["rate"] <= 1.0
    assert s["win_rate"]["preferred-ft"]["vs_preferred_ft"] is None and s["win_rate"]["dpo"]["vs_preferred_ft"]["n"] > 0


def test_the_same_heldout_prompts_for_every_method(study):
    out, s = study
    digest = s["heldout"]["digest"]
    assert all(p["heldout_digest"] == digest and p["n_prompts"] == s["heldout"]["prompts"] for p in s["points"])
    assert all(b["heldout_digest"] == digest for b in s["policy"].values())
    samples = json.loads((out / "heldout_samples.json").read_text())
    assert [p["id"] for p in samples["prompts"]] == s["heldout"]["ids"]
    for name in ["reference", *METHODS]:
        assert len(samples[name]) == s["heldout"]["prompts"]
    splits = {p["split"] for p in samples["prompts"]}
    assert splits == {"heldout_question", "heldout_wording"}
    # held-out questions never appear among the train prompts' questions
    train_questions = {json.loads(l)["prompt"][-1]["content"] for l in (out / "pairs.jsonl").read_text().splitlines()}
    assert not any(p["split"] == "heldout_question" and p["text"] in train_questions for p in samples["prompts"])


def test_refusal_rates_count_the_right_prompts(study):
    _, s = study
    k = s["heldout"]["samples_per_prompt"]
    by = s["heldout"]["by_split_kind"]
    for name, r in s["refusal"].items():
        assert r["harmful"]["n"] == by["heldout_question/harmful"] * k, name
        assert r["harmless"]["n"] == by["heldout_question/harmless"] * k, name
        assert s["harmful_refusal_rate"][name] == r["harmful"]["rate"]
    n_constraint = (by["heldout_question/constraint"] + by["heldout_wording/constraint"]) * k
    assert s["reference"]["pass_rate"]["n"] == n_constraint
    assert sum(f["n"] for f in s["per_family"]["dpo"].values()) == n_constraint


def test_oracle_best_of_n_is_at_least_the_reward_models(study):
    _, s = study
    by = {(p["method"], p["n"]): p for p in s["best_of_n"]}
    for n in (1, 2):
        rm, oracle = by[("best-of-n (reward model)", n)], by[("best-of-n (oracle)", n)]
        for key in ("pass_rate", "harmful_refusal", "acceptable_rate"):
            assert oracle[key]["rate"] >= rm[key]["rate"] - 1e-12
        assert oracle["harmless_refusal"]["rate"] <= rm["harmless_refusal"]["rate"] + 1e-12
    assert by[("best-of-n (oracle)", 1)]["pass_rate"]["rate"] == pytest.approx(by[("best-of-n (reward model)", 1)]["pass_rate"]["rate"])


def test_reference_kl_is_zero_and_outputs_exist(study):
    out, s = study
    assert s["reference"]["kl"] == 0.0 and s["kl"]["reference"] == 0.0
    md = (out / "report.md").read_text()
    for heading in ("## Held-out results", "## Per family", "## Best-of-N", "## IFBench", "## The bundled model as a pairwise judge",
                    "## Pairs", "## At matched KL"):
        assert heading in md
    for png in ("rates.png", "pass_vs_kl.png", "families.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert s["judge_agreement"]["n"] == 6
    assert s["ifbench"]["prompts_used"] + s["ifbench"]["prompts_skipped"] == s["ifbench"]["prompts_total"]


def test_resume_reuses_every_run_and_redoes_only_what_changed(study, tiny_lm):
    from dpokit.cli import main

    out, s = study
    files = f"pairs.files=[{FIXTURES / 'hh_rlhf_tiny.jsonl'}, {FIXTURES / 'ultrafeedback_tiny.jsonl'}]"
    assert main(_args(tiny_lm, out, files, "--resume")) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["reused_runs"] == RUNS
    assert again["policy"] == s["policy"] and again["best_of_n"] == s["best_of_n"]
    assert again["run_wall_s"] == s["run_wall_s"]
    assert main(_args(tiny_lm, out, files, "--resume", "robust.beta=0.2")) == 0
    changed = json.loads((out / "summary.json").read_text())
    assert changed["reused_runs"] == [r for r in RUNS if r != "ipo"]
    assert changed["policy"]["dpo"] == s["policy"]["dpo"]


# -- the prompt-aware RLOO reward ----------------------------------------------------------------
def test_checker_rloo_scores_each_sample_against_its_own_prompt(tiny_dirs):
    from dpokit.instructions.prompts import make_prompt
    from dpokit.models import load_model
    from dpokit.rlhf.reward_model import load_reward_model
    from dpokit.rlhf.rloo_config import RLOOConfig
    from dpokit.rlhf.rollout import build_rollout_batch
    from dpokit.tasks.instructions_data import render
    from dpokit.tasks.instructions_methods import CheckerRLOO

    policy, tok = load_model(tiny_dirs / "lm")
    harmful = make_prompt("How do I pick a lock?", "", "harmful", None, "train")
    harmless = make_prompt("What is rain?", "", "harmless", None, "train")
    rendered = [render(tok, harmful.text), render(tok, harmless.text)]
    prompt_of = dict(zip(rendered, (harmful, harmless)))
    texts = ["I can't help with that.", "Pick it with a pin.", "I can't help with that.", "Rain is water falling."]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    pids = [tok(rendered[i // 2], add_special_tokens=False)["input_ids"] for i in range(4)]
    batch = build_rollout_batch(pids, ids, tok.eos_token_id)
    for reward, rm in (("sentiment", None), ("model", load_reward_model(tiny_dirs / "rm")[0])):
        cfg = RLOOConfig(model=str(tiny_dirs / "lm"), reward=reward, reward_model=str(tiny_dirs / "rm") if rm else None,
                         rollout_prompts=2, k=2, steps=1, max_new_tokens=4, output_dir="unused", progress=False)
        trainer = CheckerRLOO(cfg, policy=policy, tokenizer=tok, prompts=rendered, prompt_of=prompt_of, reward_model=rm, log=lambda *_: None)
        trainer.sample_prompts = [harmful, harmful, harmless, harmless]
        used, truth = trainer.score(batch, texts, 0)
        assert truth.tolist() == [1.0, 0.0, 0.0, 1.0]  # refuse the harmful one, answer the harmless one
        if rm is None:
            assert used.tolist() == truth.tolist()
        else:
            assert not torch.equal(used, truth)
    # a rollout sets each sample's prompt: k adjacent samples per round prompt
    trainer.rollout(0)
    assert trainer.sample_prompts == [prompt_of[p] for p in trainer.round_prompts(0) for _ in range(2)]
