"""Case study 2's runs, one function per method. Each returns a JSON-able result (its evaluated
points, and any report) that `dpokit.tasks.frontier_runs.FinishedRuns` stores under the run's
key, so `dpokit run instructions --resume` reuses what an earlier invocation finished.

    preferred-ft   SFT on the chosen responses of the pairs
    dpo            DPO on the pairs (top-level beta, lr, ...), evaluated at `dpo.points` steps
    <robust.loss>  IPO / cDPO / robust DPO on the same pairs
    rm             Bradley–Terry reward model on the same pairs
    rloo-rm        RLOO against the reward model: the RLHF baseline
    rloo-oracle    RLOO against the checker itself (`instructions_data.oracle_reward`)
    best-of-n      M reference samples per held-out prompt; picked by the reward model / the checker
    judge          the bundled model as a pairwise judge of the pairs
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from dpokit.config import ConfigError, TrainConfig
from dpokit.rlhf import online
from dpokit.rlhf.rloo import RLOOTrainer
from dpokit.tasks.frontier_methods import eval_steps, online_points
from dpokit.tasks.frontier_runs import FinishedRuns, file_digest, key_of, settings_of
from dpokit.tasks.instructions_config import PROMPT_KINDS
from dpokit.tasks.instructions_data import oracle_reward
from dpokit.tasks.sentiment import train_config_of


@dataclass
class Study:
    """What the runs share. `base` is what every run's result depends on besides its own
    settings (the model, the held-out prompts and how they are sampled); `rm_key` joins once
    the reward model exists."""

    cfg: Any  # InstructionsConfig
    run_dir: Path
    evaluator: Any  # dpokit.tasks.instructions.Evaluator
    runs: FinishedRuns
    base: dict
    train_rendered: list[str]  # the train prompts as the policy sees them (chat template applied)
    prompt_of: dict  # rendered text -> InstructionPrompt (the checker's view of a prompt)
    heldout_pairs: bool = False  # heldout_pairs.jsonl holds pairs (the trainers' held-out eval)
    rm_dir: Path | None = None
    rm: Any = None
    rm_key: str | None = None
    pft_key: str | None = None  # the Preferred-FT run's key and final point, once it exists
    pft_point: dict | None = None
    ref_samples: Any = None  # the reference's held-out SampleSet (Best-of-N may reuse it)
    bf16: bool = False  # every sampling under bf16 autocast (instructions.samples_in_bf16; in st.base's eval settings)

    @property
    def pairs(self) -> Path:
        return self.run_dir / "pairs.jsonl"

    @property
    def eval_data(self) -> str | None:
        return str(self.run_dir / "heldout_pairs.jsonl") if self.heldout_pairs else None


def total_steps(cfg, n_pairs: int) -> int:
    """Optimizer steps of a run on `n_pairs` pairs (max_steps, else epochs of batches)."""
    return cfg.max_steps or max(1, math.ceil(cfg.epochs * math.ceil(max(n_pairs, 1) / (cfg.batch_size * cfg.grad_accum))))


# -- offline: Preferred-FT, DPO and the robust variant -----------------------------------------
def pft_final(st: Study) -> Path:
    return st.run_dir / "preferred-ft" / "final"


def from_pft(st: Study, section: str = "dpo") -> bool:
    """Whether `section`'s runs (dpo: DPO, the robust variant and the online rounds; rloo: both
    RLOO runs) start from the Preferred-FT model."""
    return getattr(st.cfg, section).start == "preferred-ft"


def _needs_pft_weights(st: Study) -> bool:
    rloo = st.cfg.rloo
    return from_pft(st) or (from_pft(st, "rloo") and (rloo.reward_model or rloo.oracle))


def _starting_at_pft(st: Study, done: dict, method: str, setting: str) -> dict:
    """`done` with Preferred-FT's point as its curve's step 0: the run starts there (its held-out
    KL is still to the study's reference, as every method's)."""
    return {**done, "points": [{**st.pft_point, "method": method, "setting": setting, "step": 0, "elapsed_s": 0.0}]
                              + done["points"]}


def preferred_ft_data(st: Study) -> Path:
    """The pair file Preferred-FT trains on (the chosen responses): pairs.jsonl, or with
    preferred_ft.kinds short of every kind, its records of those prompt kinds (records without a
    kind, from pair files, kept) in preferred_ft_pairs.jsonl."""
    kinds = st.cfg.preferred_ft.kinds
    if set(PROMPT_KINDS) <= set(kinds):
        return st.pairs  # the default: the run's data and key as they always were
    lines = st.pairs.read_text().splitlines()
    kept = [line for line in lines if json.loads(line).get("kind") in (None, *kinds)]
    if not kept:
        raise ConfigError(f"preferred_ft.kinds={kinds}: no pair in {st.pairs} has a prompt of these kinds")
    out = st.run_dir / "preferred_ft_pairs.jsonl"
    out.write_text("".join(line + "\n" for line in kept))
    return out


def preferred_ft(st: Study) -> dict:
    p = st.cfg.preferred_ft
    # rpo_alpha and beta (top level, for DPO and the robust variant) do nothing to SFT: fixing them
    # here (0, and beta's default) keeps them out of this run's key, so a new β reuses Preferred-FT
    sft_cfg = train_config_of(st.cfg, objective="sft", loss="dpo", data=str(preferred_ft_data(st)), eval_data=None, eval_fraction=0.0,
                              lr=p.lr, epochs=p.epochs, max_steps=0, output_dir=str(st.run_dir / "preferred-ft"), save_every=0,
                              rpo_alpha=0.0, beta=TrainConfig.beta)
    key = key_of(st.base, settings_of(sft_cfg), file_digest(sft_cfg.data))
    # DPO or RLOO starting from it needs its weights, not only its points: redo it if they are gone
    intact = (lambda _res: (pft_final(st) / "config.json").exists()) if _needs_pft_weights(st) else None
    done = st.runs.run("preferred-ft", key, partial(_trained_points, sft_cfg, "preferred-ft", f"lr={p.lr:g}", st.evaluator),
                       intact=intact)
    st.pft_key, st.pft_point = key, done["points"][-1]
    return done


def pairwise(st: Study, method: str, loss: str, beta: float, n_points: int, n_pairs: int, label_smoothing: float = 0.0) -> dict:
    """DPO (`loss="dpo"`) or the robust variant, evaluated at `n_points` evenly spaced steps.
    With dpo.start=preferred-ft it starts from the Preferred-FT model, which is also its
    reference (prepare.reference: no ref_model = the starting model); its curve then begins
    with Preferred-FT's point as step 0, since that is where the run starts (the held-out KL
    stays measured against the study's reference, as for every method)."""
    at = eval_steps(total_steps(st.cfg, n_pairs), n_points)
    start = {"model": str(pft_final(st)), "ref_model": None} if from_pft(st) else {}
    run_cfg = train_config_of(st.cfg, objective="dpo", loss=loss, beta=beta, label_smoothing=label_smoothing,
                              data=str(st.pairs), eval_data=st.eval_data, eval_fraction=0.0,
                              output_dir=str(st.run_dir / method), save_every=at[0] if len(at) > 1 else 0, keep_checkpoints=0,
                              **start)
    key = key_of(st.base, settings_of(run_cfg), file_digest(run_cfg.data), at,
                 file_digest(st.eval_data) if st.eval_data else None, *([st.pft_key] if start else []))
    setting = f"β={beta:g}" + (", from Preferred-FT" if start else "")
    done = st.runs.run(method, key, partial(_trained_points, run_cfg, method, setting, st.evaluator))
    return _starting_at_pft(st, done, method, setting) if start else done


def _trained_points(run_cfg, method: str, setting: str, evaluator) -> dict:
    """Train, then evaluate each checkpoint and the final model (time prorated by step)."""
    from dpokit.models import load_model
    from dpokit.train.loop import train

    evaluator.stage(f"{method}: training ({run_cfg.objective}, loss {run_cfg.loss if run_cfg.objective == 'dpo' else '-'})")
    result = train(run_cfg, log=lambda *_: None, force=True)
    seconds, steps = result.summary["train_seconds"], result.summary["steps"]
    checkpoints = [(int(ck.name.split("-")[1]), ck / "model") for ck in sorted(Path(run_cfg.output_dir).glob("checkpoint-*"))]
    points = []
    for step, where in sorted(checkpoints) + [(steps, None)]:
        policy = result.model if where is None else load_model(where)[0]
        points.append(evaluator(policy, method, setting, step, seconds * step / max(steps, 1)))
    ev = result.summary.get("eval") or {}
    return {"points": points, "train": {"steps": steps, "seconds": seconds, "skipped_steps": result.summary.get("skipped_steps"),
                                        "heldout_pair_accuracy": ev.get("rewards/accuracies")}}


# -- the reward model --------------------------------------------------------------------------
def reward_model(st: Study) -> dict:
    """The Bradley–Terry reward model on the study's pairs; sets st.rm_dir, st.rm, st.rm_key."""
    from dpokit.rlhf.reward_model import load_reward_model

    r = st.cfg.rm
    rm_cfg = train_config_of(st.cfg, objective="rm", loss="dpo", data=str(st.pairs), eval_data=st.eval_data, eval_fraction=0.0,
                             lr=r.lr, head_lr=r.head_lr, epochs=r.epochs, batch_size=r.batch_size, max_steps=0,
                             output_dir=str(st.run_dir / "rm"), save_every=0, rpo_alpha=0.0)  # as Preferred-FT's
    st.rm_key = key_of(st.base, settings_of(rm_cfg), file_digest(rm_cfg.data), file_digest(st.eval_data) if st.eval_data else None)
    done = st.runs.run("rm", st.rm_key, partial(_fit_reward_model, rm_cfg, st.evaluator),
                       intact=lambda res: (Path(res["final_dir"]) / "config.json").exists())
    st.rm_dir = Path(done["final_dir"])
    st.rm = load_reward_model(st.rm_dir)[0]
    return done["report"]


def _fit_reward_model(rm_cfg, evaluator) -> dict:
    from dpokit.train.loop import train

    evaluator.stage("reward model (Bradley–Terry) on the pairs")
    result = train(rm_cfg, log=lambda *_: None, force=True)
    ev = result.summary.get("eval") or {}
    return {"final_dir": str(result.final_dir),
            "report": {"heldout_pair_accuracy": ev.get("rewards/accuracies"), "train_seconds": result.summary["train_seconds"],
                       "steps": result.summary["steps"]}}


# -- online: RLOO against the reward model or the checker ---------------------------------------
class CheckerRLOO(RLOOTrainer):
    """RLOO whose ground truth needs the prompt: the checker judges a response against its own
    prompt's constraint or kind. The base trainer's reward_fn sees texts only, so `score` is
    extended: each sample's prompt is known from the round's prompts (k adjacent samples each).
    With cfg.reward == "model" the reward model's score trains and the checker is logged beside
    it; otherwise (the oracle run) the checker's 0/1 reward trains."""

    def __init__(self, cfg, *, prompt_of: dict, **kwargs):
        super().__init__(cfg, reward_fn=lambda texts: [0.0] * len(texts), **kwargs)
        self.prompt_of, self.sample_prompts = prompt_of, []

    def rollout(self, rnd: int):
        batch, texts = super().rollout(rnd)
        self.sample_prompts = [self.prompt_of[p] for p in self.round_prompts(rnd) for _ in range(self.cfg.k)]
        return batch, texts

    @torch.no_grad()
    def score(self, batch, texts: list[str], rnd: int | None = None):
        used, _ = super().score(batch, texts, rnd)  # the reward model's checked score when reward=model
        label = online.sample_labeller(self.tokenizer, batch, texts, rnd)
        truth = online.checked_scores(lambda rows: [oracle_reward(self.sample_prompts[i], texts[i]) for i in rows],
                                      len(texts), label, "the checker reward").to(self.device)
        return (used if self.cfg.reward == "model" else truth), truth


def rloo(st: Study, method: str) -> dict:
    """RLOO against the reward model (`method="rloo-rm"`) or the checker (`"rloo-oracle"`).
    With rloo.start=preferred-ft the policy starts from the Preferred-FT model, and so does its
    KL penalty (RLOOTrainer's reference is a frozen copy of the starting policy); its curve then
    begins with Preferred-FT's point as step 0, as DPO's does with dpo.start=preferred-ft."""
    from dpokit.rlhf.rloo_config import RLOOConfig

    cfg, r = st.cfg, st.cfg.rloo
    with_rm = method == "rloo-rm"
    start = from_pft(st, "rloo")
    # reward="sentiment" is RLOOConfig's name for "the ground truth itself": here the checker.
    rloo_cfg = RLOOConfig(
        model=str(pft_final(st)) if start else cfg.model, reward="model" if with_rm else "sentiment",
        reward_model=str(st.rm_dir) if with_rm else None,
        kl_coef=r.kl_coef, steps=r.steps, rollout_prompts=r.rollout_prompts, k=r.k, lr=r.lr,
        max_new_tokens=cfg.pairs.max_new_tokens, temperature=cfg.pairs.temperature, seed=cfg.seed,
        output_dir=str(st.run_dir / method), progress=False, rollout_bf16=st.bf16,  # sampled as the study samples
    )
    # the model path alone does not say which weights are there: Preferred-FT's key does
    key = key_of(st.base, settings_of(rloo_cfg), st.rm_key if with_rm else None, st.train_rendered, r.points,
                 *([st.pft_key] if start else []))
    setting = f"kl_coef={rloo_cfg.kl_coef:g}" + (", from Preferred-FT" if start else "")
    done = st.runs.run(method, key, partial(_rloo_run, st, rloo_cfg, method, setting))
    return _starting_at_pft(st, done, method, setting) if start else done


def _rloo_run(st: Study, rloo_cfg, method: str, setting: str) -> dict:
    from dpokit.config import save_config
    from dpokit.models import load_model

    st.evaluator.stage(f"{method}: RLOO {setting}, {rloo_cfg.steps} rounds")
    out = Path(rloo_cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(rloo_cfg, out / "config.yaml")  # which model it started from (and was KL-penalised to)
    policy, tokenizer = load_model(rloo_cfg.model, dtype=st.cfg.dtype)
    trainer = CheckerRLOO(rloo_cfg, policy=policy, tokenizer=tokenizer, prompts=st.train_rendered, prompt_of=st.prompt_of,
                          reward_model=st.rm if rloo_cfg.reward == "model" else None, log=lambda *_: None)
    return online_points(trainer, method, setting, rloo_cfg.steps, st.cfg.rloo.points, st.evaluator, out)


# -- Best-of-N ---------------------------------------------------------------------------------
def best_of_n(st: Study, ref_model, tokenizer) -> dict:
    # bon.reuse_reference came later: left out of the key when off, so earlier runs keep theirs
    bon = {k: v for k, v in dataclasses.asdict(st.cfg.bon).items() if not (k == "reuse_reference" and not v)}
    key = key_of(st.base, bon, st.rm_key, st.cfg.pairs.batch_size)  # st.base holds the evaluation's temperature
    return st.runs.run("best-of-n", key, partial(_best_of_n_run, st, ref_model, tokenizer))


def _bon_samples(st: Study, ref_model, tokenizer) -> list[list]:
    """bon.m reference samples per held-out prompt (seed eval.seed + 1, at the evaluation's
    temperature: Best-of-N is a way of sampling at evaluation time). With bon.reuse_reference
    the first eval.samples_per_prompt of them are the reference's held-out samples (the same
    model and sampling settings, so the same distribution: iid draws) and only the rest are new."""
    from dpokit.generate import sample_completions

    cfg, ev = st.cfg, st.evaluator
    reused = [list(row[:cfg.bon.m]) for row in st.ref_samples.completions] if cfg.bon.reuse_reference else None
    extra = cfg.bon.m - (len(reused[0]) if reused else 0)
    if extra <= 0:
        return reused
    comps = sample_completions(ref_model, tokenizer, ev.rendered, n_per_prompt=extra, max_new_tokens=cfg.pairs.max_new_tokens,
                               temperature=cfg.eval.temperature or cfg.pairs.temperature, batch_size=cfg.pairs.batch_size,
                               seed=cfg.eval.seed + 1, progress=False, desc="best-of-n", autocast_bf16=st.bf16)
    return [old + new for old, new in zip(reused, comps)] if reused else comps


def _best_of_n_run(st: Study, ref_model, tokenizer) -> dict:
    """M reference samples per held-out prompt, scored once; the curve over N is exact
    (dpokit.eval.instructions_eval.best_of_n_points). Also the reward model's within-prompt
    pairwise accuracy on them, against the checker's ordering."""
    import time

    from dpokit.eval.instructions_eval import best_of_n_points, oracle_selector
    from dpokit.rlhf.best_of_n import _reward_model_scores, within_prompt_pair_accuracy

    cfg, ev = st.cfg, st.evaluator
    ev.stage(f"Best-of-N: {cfg.bon.m} reference samples per held-out prompt")
    started = time.perf_counter()
    comps = _bon_samples(st, ref_model, tokenizer)
    texts = [[c.text for c in row] for row in comps]
    scores = _reward_model_scores(st.rm, tokenizer, ev.rendered, comps, cfg.pairs.batch_size) if st.rm is not None else None
    points = best_of_n_points(ev.heldout, texts, scores, cfg.bon.ns)
    rm_eval = None
    if scores is not None:
        truth = torch.tensor([[oracle_selector(p, t) for t in row] for p, row in zip(ev.heldout, texts)], dtype=torch.float64)
        rm_eval = within_prompt_pair_accuracy(truth, scores.to(torch.float64), min_gap=0.5)
    seconds = time.perf_counter() - started
    for p in points:
        p["elapsed_s"] = seconds
    return {"points": points, "reward_model_on_samples": rm_eval}


# -- the model as judge ------------------------------------------------------------------------
def judge(st: Study, model, tokenizer, records: list[dict]) -> dict:
    from dpokit.eval.pairwise_judge import JUDGE_TEMPLATE, judge_pairs

    j = st.cfg.judge
    key = key_of(st.base, dataclasses.asdict(j), file_digest(st.pairs), JUDGE_TEMPLATE)

    def run() -> dict:
        st.evaluator.stage(f"the bundled model as a pairwise judge on {min(j.pairs, len(records))} pairs (both orders)")
        return judge_pairs(model, tokenizer, records, n=j.pairs, seed=j.seed, batch_size=st.cfg.batch_size)

    return st.runs.run("judge", key, run)
