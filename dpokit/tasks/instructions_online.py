"""Hybrid training (`dpokit run instructions online.rounds=K`): online DPO rounds on failure
slices, compared with the offline DPO run at the same total number of labelled pairs.

The offline `dpo` run trains once on the N pairs the checkers labelled on the reference's
samples. The online arm spends the same N labels over K rounds:

    budget_r = split_evenly(N, K)[r] + what round r−1 left unspent
    round r:  π_{r−1} (π_0 = the reference) sampled on a FRESH draw of train prompts
              → every sample labelled by the checkers (`pairs.is_acceptable`)
              → the failure slice: prompts with a failing sample, worst family first
              → pairs there (sampling + the critique → revision rules, as offline), the first
                budget_r of them in slice order
              → DPO from π_{r−1} on those pairs → π_r, evaluated on the held-out prompts

The reference of round r's DPO loss is `online.reference`: "fixed" = the run's reference every
round (top-level ref_model, else the starting model), "updated" = π_{r−1} (the starting model
of the round), "both" = one chain of each. Round 1 starts from the reference either way, so the
chains share it (one run, `online-r1`).

With dpo.start=preferred-ft, π_0 is the Preferred-FT model (SFT on the chosen responses of the
offline pairs), as for the offline DPO run: round 1 samples it (fresh samples: the cached ones are
the study model's) and starts from it, "fixed" anchors every round to it, "updated" to π_{r−1}.
Both arms then start from the same Preferred-FT, whose N labels are a shared sunk cost; the
comparison is at equal ADDITIONAL labels (N DPO pairs each), and the chains' curves start at
Preferred-FT's point at 0 labels.

Prompts come from the train prompts only (the held-out ones are never sampled for training): a
seeded permutation read in draws of `online.prompts_per_draw` prompts; each round starts where the
previous one stopped, so prompts are fresh until the permutation is used up, after which it is
read again (a new pass: new samples of the newer policy, new labels). A round draws until its
budget is spent or it has read one pass's worth of prompts; what it could not spend carries to
the next round, and the last round's remainder is reported as unspent. Labels used + unspent = N
exactly. Round 1's first pass reuses the reference's cached train samples (the ones the offline
pairs came from).

Steps: with top-level max_steps set, the online rounds share it (`split_evenly`, at least one step
each); else each round runs `epochs` over its own pairs, so both arms see every label `epochs`
times. Each round restarts the learning-rate schedule (warmup included).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpokit.config import ConfigError
from dpokit.eval.policy_eval import SampleSet
from dpokit.instructions.pairs import is_acceptable
from dpokit.tasks import instructions_data as idata
from dpokit.tasks.frontier_runs import file_digest, key_of, settings_of
from dpokit.tasks.sentiment import train_config_of


# -- pure parts ------------------------------------------------------------------------------------
def split_evenly(total: int, parts: int) -> list[int]:
    """`total` = q·parts + r (0 ≤ r < parts) as `parts` shares: the first r get q + 1, the others
    q, so they sum to `total` exactly (10 over 3 → [4, 3, 3])."""
    if parts < 1 or total < 0:
        raise ValueError(f"need parts ≥ 1 and total ≥ 0, got {total} over {parts}")
    q, r = divmod(total, parts)
    return [q + (i < r) for i in range(parts)]


def group_of(prompt) -> str:
    """The group a failure is counted in: the constraint family, else the prompt's kind."""
    return prompt.constraint.family if prompt.constraint is not None else prompt.kind


def failure_by_group(prompts, flags: list[list[bool]]) -> dict[str, dict]:
    """{group: {"fail", "n", "rate"}} over the samples: `flags[i][k]` = sample k of prompt i is
    acceptable; rate = failing samples / samples of the group."""
    fail, n = Counter(), Counter()
    for p, row in zip(prompts, flags):
        fail[group_of(p)] += sum(not f for f in row)
        n[group_of(p)] += len(row)
    return {g: {"fail": fail[g], "n": n[g], "rate": fail[g] / n[g] if n[g] else None} for g in sorted(n)}


def failure_slice(prompts, flags: list[list[bool]]) -> list[int]:
    """Indices of the prompts where the policy still fails (a sample that is not acceptable),
    in priority order: the group's failure rate (`failure_by_group`) descending, then the
    prompt's own failure share descending, then the prompt's position. Prompts whose every
    sample is acceptable are left out (no pair can teach them anything new)."""
    if len(prompts) != len(flags):
        raise ValueError(f"{len(prompts)} prompts but {len(flags)} rows of labels")
    groups = failure_by_group(prompts, flags)
    share = [sum(not f for f in row) / len(row) if row else 0.0 for row in flags]
    failing = [i for i, s in enumerate(share) if s > 0]
    return sorted(failing, key=lambda i: (-groups[group_of(prompts[i])]["rate"], -share[i], i))


def prompt_order(ids: list[str], seed: int) -> list[str]:
    """The train prompts in the order the online rounds read them: a seeded permutation."""
    out = list(ids)
    random.Random(seed).shuffle(out)
    return out


def draw(order: list[str], index: int, size: int) -> list[tuple[str, int]]:
    """Draw `index` (0-based, counted over all rounds): the `size` prompts at positions
    index·size … index·size + size − 1 of the order read cyclically, each with its pass (position
    // len(order): 0 the first time a prompt is read, 1 the second ...)."""
    if not order or size < 1:
        raise ValueError("draw needs prompts and size ≥ 1")
    start = index * size
    return [(order[pos % len(order)], pos // len(order)) for pos in range(start, start + size)]


def draws_per_pass(n_prompts: int, size: int) -> int:
    """Draws that read one pass's worth of prompts: a round's most."""
    return max(1, math.ceil(n_prompts / size))


# -- one round -------------------------------------------------------------------------------------
@dataclass
class Online:
    """What the rounds share: the study, the base model, the train prompts and the reference's
    cached samples of them (aligned with `train`), the label budget N."""

    st: Any  # instructions_methods.Study
    ref_model: Any
    tokenizer: Any
    train: list  # InstructionPrompt, split "train" only
    rendered_of: dict  # prompt id → rendered text
    ref_samples: SampleSet
    n_labels: int
    start: str | None = None  # π_0's directory when it is not the study's model (Preferred-FT's final)

    @property
    def size(self) -> int:
        o = self.st.cfg.online
        return o.prompts_per_draw or max(1, math.ceil(len(self.train) / o.rounds))


def _subset(samples: SampleSet, rows: list[int]) -> SampleSet:
    return SampleSet([samples.prompts[i] for i in rows], [samples.completions[i] for i in rows],
                     [samples.rewards[i] for i in rows])


def _sample_draw(on: Online, policy, prompts, passes: list[int], seed: int) -> SampleSet:
    """The policy's samples of one draw; the reference's first pass reuses its cached samples."""
    if policy is None and not any(passes):
        row_of = {p.id: i for i, p in enumerate(on.train)}
        return _subset(on.ref_samples, [row_of[p.id] for p in prompts])
    p = on.st.cfg.pairs
    return idata.sample_prompts(policy if policy is not None else on.ref_model, on.tokenizer, prompts,
                                [on.rendered_of[x.id] for x in prompts], n=p.samples_per_prompt,
                                max_new_tokens=p.max_new_tokens, temperature=p.temperature, batch_size=p.batch_size,
                                seed=seed, desc="online samples", autocast_bf16=on.st.bf16)


def collect_pairs(on: Online, policy, budget: int, first_draw: int) -> tuple[list[dict], dict]:
    """Draw fresh train prompts, label the policy's samples (`policy` None = the reference), and
    build pairs on the failure slices until `budget` pairs or one pass's worth of draws.
    Returns (the kept records, in slice order; the round's counts)."""
    cfg = on.st.cfg
    by_id = {p.id: p for p in on.train}
    records, sampled, failing, over, no_pair = [], [], 0, 0, Counter()
    groups: dict[str, Counter] = {}
    d = first_draw
    while len(records) < budget and d - first_draw < draws_per_pass(len(on.train), on.size):
        chosen = draw(prompt_order(list(by_id), cfg.online.seed), d, on.size)
        prompts = [by_id[i] for i, _ in chosen]
        samples = _sample_draw(on, policy, prompts, [k for _, k in chosen], seed=cfg.pairs.seed + 1 + d)
        d += 1
        flags = [[is_acceptable(p, c.text) for c in row] for p, row in zip(prompts, samples.completions)]
        for g, v in failure_by_group(prompts, flags).items():
            groups.setdefault(g, Counter()).update({"fail": v["fail"], "n": v["n"]})
        order = failure_slice(prompts, flags)
        sampled += [p.id for p in prompts]
        failing += len(order)
        got, report = idata.rule_pairs([prompts[i] for i in order], _subset(samples, order), seed=cfg.pairs.seed + d,
                                       max_pairs_per_prompt=cfg.pairs.max_pairs_per_prompt, revise=cfg.pairs.revise,
                                       revisions=cfg.pairs.revisions_per_prompt, contrast_harmless=cfg.pairs.harmless_contrast)
        no_pair.update(report["no_pair_reasons"])
        room = budget - len(records)
        over += max(0, len(got) - room)
        records += got[:room]
    return records, {
        "budget": budget, "labels_used": len(records), "unspent": budget - len(records), "first_draw": first_draw,
        "next_draw": d, "prompts_sampled": len(sampled), "prompt_ids": sampled, "prompts_failing": failing,
        "passes": sorted({(pos // len(on.train)) for pos in range(first_draw * on.size, d * on.size)}),
        "failure_by_group": {g: {**c, "rate": c["fail"] / c["n"] if c["n"] else None} for g, c in sorted(groups.items())},
        "by_origin": dict(sorted(Counter(r["origin"] for r in records).items())),
        "pairs_over_budget": over, "no_pair_reasons": dict(sorted(no_pair.items())),
    }


def round_config(on: Online, r: int, reference: str | None, start: str | None, max_steps: int, out_dir: Path, data: Path):
    """Round r's DPO config: starts from `start` (the previous round's model; None = π_0: the
    study's model, or `on.start`), its reference π_0's (fixed, or round 1) or the starting model
    (updated)."""
    cfg = on.st.cfg
    fixed_ref = cfg.ref_model or on.start or cfg.model  # None below = the starting model (prepare.reference)
    return train_config_of(cfg, objective="dpo", loss="dpo", data=str(data), eval_data=on.st.eval_data, eval_fraction=0.0,
                           model=start or on.start or cfg.model, ref_model=None if reference == "updated" and r > 1 else
                           (cfg.ref_model if r == 1 else fixed_ref), max_steps=max_steps,
                           output_dir=str(out_dir), save_every=0, keep_checkpoints=0)


def _evaluate(on: Online, policy, method: str, setting: str, step: int, seconds: float) -> dict:
    """The held-out point of a round's policy (as every method's, less IFBench), without texts."""
    ev = on.st.evaluator
    samples = idata.sample_prompts(policy, on.tokenizer, ev.heldout, ev.rendered, desc=f"{method} samples", **ev.settings())
    point = ev.point(method, setting, step, ev.kl(policy, samples), samples, None, seconds)
    ev.stage(f"  {method} {setting}: pass {point['pass_rate']['rate']:.3f}, KL {point['kl']:.2f}")
    return {k: v for k, v in point.items() if k != "texts"}


def run_round(on: Online, name: str, r: int, reference: str | None, budget: int, prev: dict | None, max_steps: int) -> dict:
    """Sample π_{r−1}, label, build the pairs, train π_r, evaluate it (module docstring)."""
    from dpokit.models import load_model
    from dpokit.train.loop import train

    run_dir = on.st.run_dir / name
    on.st.evaluator.stage(f"{name}: sampling the policy on fresh train prompts for {budget} labelled pairs")
    # π_{r−1}; None = the study's model (whose first pass of samples is cached)
    start = prev["final_dir"] if prev else on.start
    policy = load_model(start, dtype=on.st.cfg.dtype)[0] if start else None
    records, info = collect_pairs(on, policy, budget, prev["next_draw"] if prev else 0)
    del policy  # training loads its own copy of the starting model
    if not records:
        raise ConfigError(f"{name}: the policy passed every sampled prompt or no pair could be built ({info['no_pair_reasons']}); "
                          "lower online.rounds or sample more (pairs.samples_per_prompt)")
    run_dir.mkdir(parents=True, exist_ok=True)
    data = run_dir / "round_pairs.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in records))
    run_cfg = round_config(on, r, reference, prev["final_dir"] if prev else None, max_steps, run_dir, data)
    on.st.evaluator.stage(f"{name}: DPO on {len(records)} pairs (reference: {run_cfg.ref_model or 'the starting model'})")
    result = train(run_cfg, log=lambda *_: None, force=True)
    steps, seconds = result.summary["steps"], result.summary["train_seconds"]
    point = _evaluate(on, result.model, f"online-{reference}" if reference else "online", f"round {r}", steps, seconds)
    return {**info, "round": r, "reference": reference, "model": run_cfg.model, "ref_model": run_cfg.ref_model,
            "steps": steps, "train_seconds": seconds, "final_dir": str(result.final_dir), "point": point}


# -- the chains ------------------------------------------------------------------------------------
def chains_of(reference: str) -> list[str]:
    return ["fixed", "updated"] if reference == "both" else [reference]


def run_online(on: Online) -> dict[str, list[dict]]:
    """Round 1 (shared), then rounds 2..K of each reference chain, each a finished run that
    `--resume` reuses when its key (its inputs and every earlier round's) is unchanged.
    Returns {chain: [round results]}."""
    cfg, st = on.st.cfg, on.st
    k = cfg.online.rounds
    if on.n_labels < k:
        raise ConfigError(f"online.rounds={k}: more rounds than the {on.n_labels} labelled pairs of the offline run "
                          f"(at least one pair per round); set online.rounds in [2, {max(on.n_labels, 2)}]")
    budgets = split_evenly(on.n_labels, k)
    steps = [max(1, s) for s in split_evenly(cfg.max_steps, k)] if cfg.max_steps else [0] * k
    # online.reference is left out: round 1 does not depend on it, and a later round's reference
    # is in its own TrainConfig (ref_model), so `reference=both` → `fixed` reuses the fixed chain
    online = {k: v for k, v in dataclasses.asdict(cfg.online).items() if k != "reference"}
    # keys that came later are left out at their defaults, so earlier runs keep their keys
    later = {"revisions_per_prompt": 1, "harmless_contrast": False}
    pairs = {k: v for k, v in dataclasses.asdict(cfg.pairs).items() if not (k in later and v == later[k])}
    common = key_of(st.base, {"online": online, "pairs": pairs, "n": on.n_labels,
                              "train": [p.id for p in on.train], "size": on.size},
                    # from Preferred-FT: its weights are every round's input (joins only then: default keys unchanged)
                    *([on.st.pft_key] if on.start else []))

    def one(name: str, r: int, reference: str | None, prev: dict | None, prev_key: str) -> tuple[dict, str]:
        budget = budgets[r - 1] + (prev["unspent"] if prev else 0)
        out = st.run_dir / name
        probe = round_config(on, r, reference, prev["final_dir"] if prev else None, steps[r - 1], out, out / "round_pairs.jsonl")
        key = key_of(common, prev_key, budget, settings_of(probe), file_digest(st.eval_data) if st.eval_data else None)
        done = st.runs.run(name, key, lambda: run_round(on, name, r, reference, budget, prev, steps[r - 1]),
                           intact=lambda res: (Path(res["final_dir"]) / "config.json").exists())
        return done, key

    first, first_key = one("online-r1", 1, None, None, "")
    chains = {}
    for reference in chains_of(cfg.online.reference):
        done, key = [first], first_key
        for r in range(2, k + 1):
            res, key = one(f"online-{reference}-r{r}", r, reference, done[-1], key)
            done.append(res)
        chains[reference] = done
    return chains


def online_summary(cfg, n_labels: int, prompts_per_draw: int, chains: dict[str, list[dict]], reference: dict, offline: dict,
                   start: str = "reference") -> dict:
    """summary.json's `online` block: each chain's pass rate against the labels it had used by
    the end of each round (from π_0 at 0 labels: `reference` is π_0's point, the study's
    reference or Preferred-FT's as `start` says), and the offline DPO run's at N."""

    def at(point: dict, labels: int, **more) -> dict:
        m = point["metrics"]
        return {"labels": labels, "pass_rate": m["pass_rate"], "acceptable_rate": m["acceptable_rate"],
                "harmful_refusal": m["refusal"]["harmful"], "harmless_refusal": m["refusal"]["harmless"],
                "kl": point["kl"], **more}

    out_chains, final = {}, {}
    for name, rounds in chains.items():
        curve, used = [at(reference, 0, round=0)], 0
        for res in rounds:
            used += res["labels_used"]
            curve.append(at(res["point"], used, round=res["round"], budget=res["budget"], labels_used=res["labels_used"],
                            unspent=res["unspent"], by_origin=res["by_origin"], prompts_sampled=res["prompts_sampled"],
                            prompts_failing=res["prompts_failing"], passes=res["passes"], steps=res["steps"],
                            failure_by_group=res["failure_by_group"], pairs_over_budget=res["pairs_over_budget"],
                            no_pair_reasons=res["no_pair_reasons"], ref_model=res["ref_model"]))
        out_chains[name] = curve
        final[name] = {"labels_used": used, "unspent": rounds[-1]["unspent"], "pass_rate": curve[-1]["pass_rate"],
                       "vs_offline": compare(curve[-1]["pass_rate"], offline["metrics"]["pass_rate"])}
    return {"rounds": cfg.online.rounds, "reference": cfg.online.reference, "start": start, "labels_budget": n_labels,
            "round_budgets": split_evenly(n_labels, cfg.online.rounds), "prompts_per_draw": prompts_per_draw, "offline": at(offline, n_labels, method="dpo", step=offline["step"]),
            "chains": out_chains, "final": final}


def compare(a: dict, b: dict) -> str:
    """"higher" / "lower" when the two Wilson 95% intervals are apart, else "intervals overlap"."""
    if a["rate"] is None or b["rate"] is None:
        return "n/a"
    if a["ci95"][0] > b["ci95"][1]:
        return "higher"
    if a["ci95"][1] < b["ci95"][0]:
        return "lower"
    return "intervals overlap"


def online_study(st, ref_model, tokenizer, train, rendered_of, ref_samples: SampleSet, n_labels: int, reference: dict,
                 offline: dict) -> dict:
    """Run the online chains (`run_online`) and return summary.json's `online` block; `offline`
    is the offline DPO run's final point, trained on all `n_labels` pairs (from Preferred-FT with
    dpo.start=preferred-ft, and so is the online chain: module docstring)."""
    if any(p.split != "train" for p in train):
        raise ValueError("the online rounds sample train prompts only")  # a held-out prompt here would leak
    from dpokit.tasks.instructions_methods import from_pft, pft_final

    pft = from_pft(st)  # the online rounds follow dpo.start: both arms from the same model
    on = Online(st, ref_model, tokenizer, list(train), rendered_of, ref_samples, n_labels, start=str(pft_final(st)) if pft else None)
    return online_summary(st.cfg, n_labels, on.size, run_online(on), st.pft_point if pft else reference, offline,
                          start="preferred-ft" if pft else "reference")
