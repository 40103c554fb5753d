"""RLOO: REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024, "Back to basics";
the baseline of Kool et al. 2019). No value model, sequence-level rewards.

One round (`RLOOTrainer.round`):

    1. rollout     `rollout_prompts` prompts × k samples each from π (KV cache),
                   seed = f(seed, round); the k samples of a prompt are adjacent rows
    2. score       s_i = reward model at the last completion token (or the ground truth itself)
    3. KL          KL_i = Σ_t log π(y_it)/π_ref(y_it)  (k1 summed over the completion)
    4. advantages  r_i = s_i − β·KL_i;  A_i = r_i − mean of r_j over the other k−1 samples
    5. update      L = (1/n) Σ_i −A_i · Σ_t log π(y_it)   over the n = rollout_prompts·k samples,
                   one AdamW step per round (micro-batches of `minibatch_size` accumulate
                   into the gradient of the whole round)

With `ppo_epochs` > 1 the round is reused: each epoch is one step on the clipped
sequence-level surrogate max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)), ρ = π(y)/π_old(y), as TRL's
RLOOTrainer does. At ρ = 1 its gradient is REINFORCE's, so epoch 1 takes the same step.

The prompts of a round and its samples are seeded by the round number (as in PPO), so a
rerun with the same seed draws the same rollouts, and a run resumed from a checkpoint (policy,
optimizer, state.json: dpokit.rlhf.online_checkpoint) continues exactly as the uninterrupted
run. Reward checks, the max_kl and skipped-round stops, and the checkpoint timing are PPO's
(dpokit.rlhf.online).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from dpokit.generate import sample_completions
from dpokit.rlhf import estimators as est
from dpokit.rlhf import online
from dpokit.rlhf import online_checkpoint as occ
from dpokit.rlhf.ppo import ROUND_SEED_STRIDE, round_prompts
from dpokit.rlhf.rloo_config import RLOOConfig
from dpokit.rlhf.rollout import (
    RolloutBatch,
    build_rollout_batch,
    policy_token_logps,
    policy_token_logps_and_entropy,
    sequence_scores,
)
from dpokit.train.optim import adamw


def reinforce_losses(seq_logp: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """Per-sample REINFORCE loss −A_i · log π(y_i), log π(y_i) summed over the completion."""
    return -advantages * seq_logp


def clipped_sequence_losses(seq_logp, old_seq_logp, advantages, *, clip_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-sample max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)), clipped?) with the SEQUENCE ratio
    ρ = exp(log π(y) − log π_old(y)) (TRL's RLOO; PPO's surrogate has one ratio per token)."""
    ratio = torch.exp(seq_logp - old_seq_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_eps, 1 + clip_eps)
    return torch.maximum(unclipped, clipped), (clipped > unclipped).detach()


class RLOOTrainer:
    """Holds policy, reference and reward; `fit()` runs the rounds.

    `reward_fn(texts) -> list[float]` is the ground truth (logged every round; it is the
    reward itself when `cfg.reward == "sentiment"`). `reward_model` is a scalar-head
    sequence classifier (`dpokit rm`), used when `cfg.reward == "model"`."""

    def __init__(self, cfg: RLOOConfig, *, policy, tokenizer, prompts: list[str], reward_fn, reward_model=None, log=print):
        cfg.validate()
        self.cfg, self.log, self.tokenizer = cfg, log, tokenizer
        self.policy, self.reward_model = policy, reward_model
        self.prompts, self.reward_fn = list(prompts), reward_fn
        if not self.prompts:
            raise ValueError("RLOO needs at least one prompt")
        if cfg.reward == "model" and reward_model is None:
            raise ValueError("reward=model needs a reward model")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.device = next(policy.parameters()).device
        # LoRA: the reference is the same model with its adapter off; otherwise a frozen copy.
        self.reference = None if hasattr(policy, "disable_adapter") else copy.deepcopy(policy).eval().requires_grad_(False)
        self.optimizer = adamw([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
        self.run_dir = Path(cfg.output_dir)

    # -- rollout ------------------------------------------------------------------------------
    def round_prompts(self, rnd: int) -> list[str]:
        """The `rollout_prompts` prompts of round `rnd` (each sampled k times)."""
        return round_prompts(self.prompts, self.cfg.rollout_prompts, self.cfg.seed, rnd)

    def rollout(self, rnd: int) -> tuple[RolloutBatch, list[str]]:
        """k samples of each of the round's prompts; row i·k + j is sample j of prompt i."""
        cfg = self.cfg
        prompts = self.round_prompts(rnd)
        comps = sample_completions(
            self.policy, self.tokenizer, prompts, n_per_prompt=cfg.k, max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature, batch_size=cfg.samples_per_round, seed=cfg.seed * ROUND_SEED_STRIDE + rnd,
            progress=False, autocast_bf16=cfg.rollout_bf16,
        )
        prompt_ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        rows = [(prompt_ids[i], c) for i, row in enumerate(comps) for c in row]
        batch = build_rollout_batch([p for p, _ in rows], [c.token_ids for _, c in rows], self.pad_id)
        return batch.to(self.device), [c.text for _, c in rows]

    def _chunks(self, batch: RolloutBatch):
        for start in range(0, batch.mask.shape[0], self.cfg.minibatch_size):
            rows = torch.arange(start, min(start + self.cfg.minibatch_size, batch.mask.shape[0]), device=self.device)
            yield rows, batch.select(rows)

    def _seq_logps(self, model, batch: RolloutBatch) -> torch.Tensor:
        """(B,) log π(y) summed over each completion, in micro-batches."""
        return torch.cat([est.masked_sum(policy_token_logps(model, sub), sub.mask, dim=-1) for _, sub in self._chunks(batch)])

    def _token_logps(self, model, batch: RolloutBatch) -> torch.Tensor:
        return torch.cat([policy_token_logps(model, sub) for _, sub in self._chunks(batch)])

    @torch.no_grad()
    def _ref_token_logps(self, batch: RolloutBatch) -> torch.Tensor:
        if self.reference is not None:
            return self._token_logps(self.reference, batch)
        with self.policy.disable_adapter():
            return self._token_logps(self.policy, batch)

    @torch.no_grad()
    def score(self, batch: RolloutBatch, texts: list[str], rnd: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(reward used for training, ground-truth reward), each (B,); RewardError naming round
        `rnd` and the sample when a reward raises or is not finite (dpokit.rlhf.online)."""
        label = online.sample_labeller(self.tokenizer, batch, texts, rnd)
        truth = online.checked_scores(lambda rows: self.reward_fn([texts[i] for i in rows]), len(texts), label,
                                      "the ground-truth reward").to(self.device)
        if self.cfg.reward == "model":
            def model_rows(rows: list[int]) -> torch.Tensor:
                sub = batch.select(torch.tensor(rows, device=self.device))
                return torch.cat([sequence_scores(self.reward_model, part) for _, part in self._chunks(sub)])

            return online.checked_scores(model_rows, len(texts), label, "the reward model's score").to(self.device), truth
        return truth, truth

    @torch.no_grad()
    def prepare(self, batch: RolloutBatch, scores: torch.Tensor) -> dict:
        """Sequence KL (k1 and k3 sums), shaped rewards and leave-one-out advantages (steps 3-4)."""
        self.policy.eval()
        parts = [policy_token_logps_and_entropy(self.policy, sub) for _, sub in self._chunks(batch)]
        logp, entropy = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        ref_logp = self._ref_token_logps(batch)
        seq_kl = est.masked_sum(est.kl_k1(logp, ref_logp), batch.mask, dim=-1)
        seq_kl_k3 = est.masked_sum(est.kl_k3(logp, ref_logp), batch.mask, dim=-1)
        rewards = est.rloo_rewards(scores, seq_kl, beta=self.cfg.kl_coef)
        return {"old_logp": est.masked_sum(logp, batch.mask, dim=-1), "seq_kl": seq_kl, "seq_kl_k3": seq_kl_k3,
                "rewards": rewards, "advantages": est.rloo_advantages(rewards, self.cfg.k),
                "entropy": float(est.masked_mean(entropy, batch.mask))}

    # -- update -------------------------------------------------------------------------------
    def update(self, batch: RolloutBatch, prep: dict) -> dict:
        """`ppo_epochs` optimizer steps, each on the gradient of the whole round."""
        sums, steps, skipped = {}, 0, 0
        self.policy.train()
        for _ in range(self.cfg.ppo_epochs):
            stats = self._step(batch, prep)
            if stats is None:
                skipped += 1
                continue
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + value
            steps += 1
        self.policy.eval()
        return {**{k: v / max(steps, 1) for k, v in sums.items()}, "skipped_steps": skipped}

    def _step(self, batch: RolloutBatch, prep: dict) -> dict | None:
        """One AdamW step on L = (1/n) Σ_i loss_i, accumulated over micro-batches; None (and no
        update) when the loss or the gradient norm is not finite."""
        cfg, n = self.cfg, batch.mask.shape[0]
        clipped_mode = cfg.ppo_epochs > 1
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.optimizer.zero_grad(set_to_none=True)
        total, clipped_count = 0.0, 0
        for rows, sub in self._chunks(batch):
            seq_logp = est.masked_sum(policy_token_logps(self.policy, sub), sub.mask, dim=-1)
            adv = prep["advantages"][rows]
            if clipped_mode:
                losses, clipped = clipped_sequence_losses(seq_logp, prep["old_logp"][rows], adv, clip_eps=cfg.clip_eps)
                clipped_count += int(clipped.sum())
            else:
                losses = reinforce_losses(seq_logp, adv)
            loss = losses.sum() / n  # mean over the round's samples, whatever the micro-batching
            if not torch.isfinite(loss):
                self.optimizer.zero_grad(set_to_none=True)
                return None
            loss.backward()
            total += float(loss.detach())
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm) if cfg.max_grad_norm > 0 else _grad_norm(params)
        if not torch.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        stats = {"loss": total, "grad_norm": float(norm)}
        if clipped_mode:
            stats["clip_frac"] = clipped_count / n
        return stats

    # -- the run ------------------------------------------------------------------------------
    def collect(self, rnd: int) -> dict:
        """Round `rnd` up to its update: rollout, checked scores, advantages, entropy; stops the
        run (TrainingDiverged) when the rollout's mean KL passes max_kl. Changes no state."""
        t0 = time.perf_counter()
        batch, texts = self.rollout(rnd)
        scores, truth = self.score(batch, texts, rnd)
        prep = self.prepare(batch, scores)
        online.check_kl(float(prep["seq_kl"].mean()), self.cfg, rnd, self.run_dir)
        return {"batch": batch, "scores": scores, "truth": truth, "prep": prep, "entropy": prep["entropy"],
                "rollout_s": time.perf_counter() - t0}

    def learn(self, rnd: int, collected: dict) -> dict:
        """The update of round `rnd` on what `collect` gathered; the round's metrics line."""
        batch, prep, scores = collected["batch"], collected["prep"], collected["scores"]
        t1 = time.perf_counter()
        stats = self.update(batch, prep)
        return {
            "step": rnd + 1, "split": "train", "reward/model" if self.cfg.reward == "model" else "reward/used": float(scores.mean()),
            "reward/ground_truth": float(collected["truth"].mean()), "kl": float(prep["seq_kl"].mean()),
            "kl_k3": float(prep["seq_kl_k3"].mean()), "kl_coef": self.cfg.kl_coef, "entropy": collected["entropy"],
            "length": float(batch.mask.sum(-1).mean()), **stats, "rollout_s": collected["rollout_s"],
            "train_s": time.perf_counter() - t1,
        }

    def round(self, rnd: int) -> dict:
        """Rollout, score, advantages, update; returns the round's metrics line."""
        return self.learn(rnd, self.collect(rnd))

    def round_skipped(self, metrics: dict) -> bool:
        """Whether every optimizer step of a round was skipped (non-finite loss or gradient)."""
        return metrics["skipped_steps"] == self.cfg.ppo_epochs

    def fit(self, resume=None, force: bool = False) -> dict:
        """All rounds (dpokit.rlhf.online.run_rounds); `resume` ("latest" or a checkpoint dir)
        continues a run exactly, `force` as for `dpokit dpo` (dpokit.train.rundir)."""
        return online.run_rounds(self, resume=resume, force=force, summary_name="rloo_summary.json", round_line=_round_line)

    def save(self, rnd: int) -> Path:
        """checkpoint-<round>/: policy/ (safetensors), the optimizer (safetensors + JSON),
        state.json (round, config, prompts); dpokit.rlhf.online_checkpoint."""
        return occ.save(self.run_dir, rnd, kind="rloo", models={"policy": self.policy}, tokenizer=self.tokenizer,
                        optimizer=self.optimizer, extra={}, ident=occ.identity(self.cfg, self.prompts),
                        keep=self.cfg.keep_checkpoints)

    def restore(self, path: Path, force: bool = False) -> int:
        """Load checkpoint `path` (checked before anything changes); returns its round."""
        ck = occ.read(path, kind="rloo", names=("policy",), optimizer=self.optimizer,
                      ident=occ.identity(self.cfg, self.prompts), force=force)
        occ.apply(ck, {"policy": self.policy}, self.optimizer)
        self.log(f"resumed from {ck.path} at round {ck.state['step']}")
        return ck.state["step"]


def _grad_norm(params) -> torch.Tensor:
    """L2 norm of all gradients (what clip_grad_norm_ reports), without clipping."""
    grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return torch.stack(grads).norm() if grads else torch.zeros(())


def _round_line(m: dict) -> str:
    used = m.get("reward/model", m.get("reward/used"))
    return (f"round {m['step']}: reward {used:.3f} (ground truth {m['reward/ground_truth']:.3f}), KL {m['kl']:.2f} "
            f"(β {m['kl_coef']:.3g}), entropy {m['entropy']:.2f}, loss {m.get('loss', float('nan')):.3f}, "
            f"grad norm {m.get('grad_norm', float('nan')):.2f}, {m['rollout_s']:.1f}+{m['train_s']:.1f} s")


def run_rloo(cfg: RLOOConfig, log=print, *, resume=None, force: bool = False) -> dict:
    """`dpokit rloo`'s library path: prompts, policy and reward (as PPO loads them), the rounds,
    then the policy saved under `output_dir/final` (not after a stop: dpokit.rlhf.online)."""
    from dpokit.rlhf.ppo_run import load_online_run
    from dpokit.train.checkpoint import save_final_model

    cfg.validate()
    prompts, policy, tokenizer, reward_model, reward_fn = load_online_run(cfg, log)
    log(f"RLOO: {len(prompts)} prompts, {cfg.steps} rounds of {cfg.rollout_prompts} prompts × {cfg.k} samples, reward={cfg.reward}")
    trainer = RLOOTrainer(cfg, policy=policy, tokenizer=tokenizer, prompts=prompts, reward_fn=reward_fn,
                          reward_model=reward_model, log=log)
    summary = trainer.fit(resume=resume, force=force)
    save_final_model(trainer.policy, tokenizer, Path(cfg.output_dir) / "final", cfg)
    log(f"saved {Path(cfg.output_dir) / 'final'} (policy)")
    return summary
