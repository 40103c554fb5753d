"""PPO with a KL penalty to the reference: the RLHF baseline that DPO replaces
(Ziegler et al. 2019; Stiennon et al. 2020; Ouyang et al. 2022).

One round (`PPOTrainer.round`):

    1. rollout     sample one completion per prompt from π (KV cache), seed = f(seed, round)
    2. score       s = reward model at the last completion token (or the ground truth itself)
    3. per token   log π_old, log π_ref, V_old;  r_t = −β·log(π_old/π_ref)_t,  r_T += s
    4. advantages  GAE(γ, λ) on r and V_old; whitened over the rollout's tokens
    5. update      `ppo_epochs` passes over shuffled minibatches: clipped policy loss
                   + value_coef · clipped value loss, one AdamW over policy and value model
    6. β           fixed, or the adaptive controller on the rollout's mean KL

Every random choice of a round (the samples, the minibatch order) is seeded by the round
number, so a resumed run draws what the uninterrupted run drew. Rewards are checked (a reward
that raises or is NaN/inf is a `RewardError`), and a round whose mean KL passes `max_kl` stops
the run before its update (dpokit.rlhf.online, which also runs the rounds and times the
checkpoints; their files: dpokit.rlhf.online_checkpoint).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path

import torch

from dpokit.generate import sample_completions
from dpokit.rlhf import estimators as est
from dpokit.rlhf import online
from dpokit.rlhf import online_checkpoint as occ
from dpokit.rlhf.ppo_config import PPOConfig
from dpokit.rlhf.rollout import (
    RolloutBatch,
    build_rollout_batch,
    policy_token_logps,
    policy_token_logps_and_entropy,
    sequence_scores,
    token_values,
)
from dpokit.train.optim import adamw

ROUND_SEED_STRIDE = 1_000_003  # rounds of different seeds never share a sampling seed
KL_CONTROLLER_KEYS = ("kl_coef", "kl_target", "kl_horizon")  # the controller's settings; its β is state


def round_prompts(prompts: list[str], size: int, seed: int, rnd: int) -> list[str]:
    """The `size` prompts of round `rnd`: consecutive slices of a seeded permutation per pass
    over the set, so every prompt is used once per pass and a round is a function of its number."""
    n, out, k = len(prompts), [], rnd * size
    while len(out) < size:
        epoch, offset = divmod(k, n)
        g = torch.Generator().manual_seed(seed * ROUND_SEED_STRIDE + epoch)
        take = torch.randperm(n, generator=g).tolist()[offset : offset + size - len(out)]
        out += [prompts[i] for i in take]
        k += len(take)
    return out


class PPOTrainer:
    """Holds policy, reference, value model and reward; `fit()` runs the rounds.

    `reward_fn(texts) -> list[float]` is the ground truth (logged every round; it is the
    reward itself when `cfg.reward` names it). `reward_model` is a sequence-classification
    model with a scalar head (`dpokit rm`), used when `cfg.reward == "model"`."""

    def __init__(self, cfg: PPOConfig, *, policy, tokenizer, value_model, prompts: list[str],
                 reward_fn, reward_model=None, log=print):
        cfg.validate()
        self.cfg, self.log, self.tokenizer = cfg, log, tokenizer
        self.policy, self.value_model, self.reward_model = policy, value_model, reward_model
        self.prompts, self.reward_fn = list(prompts), reward_fn
        if not self.prompts:
            raise ValueError("PPO needs at least one prompt")
        if cfg.reward == "model" and reward_model is None:
            raise ValueError("reward=model needs a reward model")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # LoRA: the reference is the same model with its adapter off; otherwise a frozen copy.
        self.reference = None if hasattr(policy, "disable_adapter") else copy.deepcopy(policy).eval().requires_grad_(False)
        params = [{"params": [p for p in policy.parameters() if p.requires_grad], "lr": cfg.lr},
                  {"params": [p for p in value_model.parameters() if p.requires_grad], "lr": cfg.value_lr or cfg.lr}]
        self.optimizer = adamw(params, weight_decay=0.0)
        if cfg.kl_target > 0:
            self.kl_ctl = est.AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
        else:
            self.kl_ctl = est.FixedKLController(cfg.kl_coef)
        self.run_dir = Path(cfg.output_dir)

    # -- one round ----------------------------------------------------------------------------
    def round_prompts(self, rnd: int) -> list[str]:
        return round_prompts(self.prompts, self.cfg.rollout_size, self.cfg.seed, rnd)

    def rollout(self, rnd: int) -> tuple[RolloutBatch, list[str]]:
        cfg = self.cfg
        prompts = self.round_prompts(rnd)
        comps = sample_completions(
            self.policy, self.tokenizer, prompts, n_per_prompt=1, max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature, batch_size=cfg.rollout_size, seed=cfg.seed * ROUND_SEED_STRIDE + rnd,
            progress=False,
        )
        prompt_ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        batch = build_rollout_batch(prompt_ids, [row[0].token_ids for row in comps], self.pad_id)
        return batch, [row[0].text for row in comps]

    def _ref_logps(self, batch: RolloutBatch) -> torch.Tensor:
        if self.reference is not None:
            return policy_token_logps(self.reference, batch)
        with self.policy.disable_adapter():
            return policy_token_logps(self.policy, batch)

    @torch.no_grad()
    def score(self, batch: RolloutBatch, texts: list[str], rnd: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(reward used for training, ground-truth reward), each (B,); RewardError naming round
        `rnd` and the sample when a reward raises or is not finite (dpokit.rlhf.online)."""
        label = online.sample_labeller(self.tokenizer, batch, texts, rnd)
        truth = online.checked_scores(lambda rows: self.reward_fn([texts[i] for i in rows]), len(texts), label,
                                      "the ground-truth reward")
        if self.cfg.reward == "model":
            model_rows = lambda rows: sequence_scores(self.reward_model, batch.select(torch.tensor(rows)))
            return online.checked_scores(model_rows, len(texts), label, "the reward model's score"), truth
        return truth, truth

    @torch.no_grad()
    def prepare(self, batch: RolloutBatch, scores: torch.Tensor) -> dict:
        """Old log-probs, values, rewards, advantages and returns of a rollout (section 3-4)."""
        self.policy.eval()
        old_logp, entropy = policy_token_logps_and_entropy(self.policy, batch)
        ref_logp = self._ref_logps(batch)
        old_values = token_values(self.value_model, batch)
        rewards, kl = est.ppo_token_rewards(scores, old_logp, ref_logp, batch.mask, beta=self.kl_ctl.beta)
        advantages, returns = est.gae(rewards, old_values, batch.mask, gamma=self.cfg.gamma, lam=self.cfg.lam)
        if self.cfg.whiten_advantages:
            advantages = est.masked_whiten(advantages, batch.mask)
        k3 = torch.where(batch.mask.bool(), est.kl_k3(old_logp, ref_logp), torch.zeros(()))
        return {"old_logp": old_logp, "old_values": old_values, "advantages": advantages, "returns": returns,
                "seq_kl": kl.sum(-1), "seq_kl_k3": k3.sum(-1), "entropy": entropy}

    def update(self, batch: RolloutBatch, prep: dict, rnd: int) -> dict:
        """`ppo_epochs` passes of clipped policy + value updates over shuffled minibatches."""
        cfg = self.cfg
        g = torch.Generator().manual_seed(cfg.seed * ROUND_SEED_STRIDE + rnd)
        sums, n, skipped = {}, 0, 0
        self.policy.train()
        self.value_model.train()
        for _ in range(cfg.ppo_epochs):
            perm = torch.randperm(batch.mask.shape[0], generator=g)
            for start in range(0, len(perm), cfg.minibatch_size):
                rows = perm[start : start + cfg.minibatch_size]
                stats = self._minibatch_step(batch.select(rows), {k: v[rows] for k, v in prep.items()})
                if stats is None:
                    skipped += 1
                    continue
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                n += 1
        self.policy.eval()
        self.value_model.eval()
        return {**{k: v / max(n, 1) for k, v in sums.items()}, "skipped_minibatches": skipped}

    def _minibatch_step(self, sub: RolloutBatch, old: dict) -> dict | None:
        cfg, mask = self.cfg, sub.mask
        logp = policy_token_logps(self.policy, sub)
        values = token_values(self.value_model, sub)
        pl = est.ppo_policy_loss(logp, old["old_logp"], old["advantages"], mask, clip_eps=cfg.clip_eps)
        vl, vclip = est.ppo_value_loss(values, old["old_values"], old["returns"], mask, clip_eps=cfg.value_clip_eps)
        loss = pl.loss + cfg.value_coef * vl
        self.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            return None  # counted by the caller; weights stay as they were
        loss.backward()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm) if cfg.max_grad_norm > 0 else torch.zeros(())
        if not torch.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"policy_loss": float(pl.loss.detach()), "value_loss": float(vl.detach()), "clip_frac": float(pl.clip_frac),
                "value_clip_frac": float(vclip), "approx_kl": float(pl.approx_kl), "grad_norm": float(norm)}

    def collect(self, rnd: int) -> dict:
        """Round `rnd` up to its update: rollout, checked scores, prepare, entropy; stops the run
        (TrainingDiverged) when the rollout's mean KL passes max_kl. Changes no state."""
        t0 = time.perf_counter()
        batch, texts = self.rollout(rnd)
        scores, truth = self.score(batch, texts, rnd)
        prep = self.prepare(batch, scores)
        online.check_kl(float(prep["seq_kl"].mean()), self.cfg, rnd, self.run_dir)
        entropy = float(est.masked_mean(prep["entropy"], batch.mask))
        return {"batch": batch, "scores": scores, "truth": truth, "prep": prep, "entropy": entropy,
                "rollout_s": time.perf_counter() - t0}

    def learn(self, rnd: int, collected: dict) -> dict:
        """The update of round `rnd` on what `collect` gathered, then β; the round's metrics line."""
        batch, prep, scores = collected["batch"], collected["prep"], collected["scores"]
        t1 = time.perf_counter()
        stats = self.update(batch, prep, rnd)
        beta = self.kl_ctl.beta
        mean_kl = float(prep["seq_kl"].mean())
        self.kl_ctl.update(mean_kl, batch.mask.shape[0])
        return {
            "step": rnd + 1, "split": "train", "reward/model" if self.cfg.reward == "model" else "reward/used": float(scores.mean()),
            "reward/ground_truth": float(collected["truth"].mean()), "kl": mean_kl, "kl_k3": float(prep["seq_kl_k3"].mean()),
            "kl_coef": beta, "entropy": collected["entropy"], "length": float(batch.mask.sum(-1).mean()),
            "explained_variance": float(est.explained_variance(prep["old_values"], prep["returns"], batch.mask)),
            **stats, "rollout_s": collected["rollout_s"], "train_s": time.perf_counter() - t1,
        }

    def round(self, rnd: int) -> dict:
        """Rollout, score, prepare, update, adapt β; returns the round's metrics line."""
        return self.learn(rnd, self.collect(rnd))

    def round_skipped(self, metrics: dict) -> bool:
        """Whether every minibatch update of a round was skipped (non-finite loss or gradient)."""
        per_epoch = -(-self.cfg.rollout_size // self.cfg.minibatch_size)
        return metrics["skipped_minibatches"] == self.cfg.ppo_epochs * per_epoch

    # -- the run ------------------------------------------------------------------------------
    def fit(self, resume=None, force: bool = False) -> dict:
        """All rounds (dpokit.rlhf.online.run_rounds); `resume` ("latest" or a checkpoint dir)
        continues a run exactly, `force` as for `dpokit dpo` (dpokit.train.rundir)."""
        return online.run_rounds(self, resume=resume, force=force, summary_name="ppo_summary.json", round_line=_round_line,
                                 summary_extra=lambda: {"kl_controller": dataclasses.asdict(self.kl_ctl)})

    def _models(self) -> dict:
        return {"policy": self.policy, "value": self.value_model}

    def save(self, rnd: int) -> Path:
        """checkpoint-<round>/: policy/ and value/ (safetensors), the optimizer (safetensors +
        JSON), state.json (round, KL controller, config, prompts); dpokit.rlhf.online_checkpoint."""
        return occ.save(self.run_dir, rnd, kind="ppo", models=self._models(), tokenizer=self.tokenizer,
                        optimizer=self.optimizer, extra={"kl_controller": dataclasses.asdict(self.kl_ctl)},
                        ident=occ.identity(self.cfg, self.prompts), keep=self.cfg.keep_checkpoints)

    def restore(self, path: Path, force: bool = False) -> int:
        """Load checkpoint `path` (checked before anything changes); returns its round."""
        from dpokit.train.checkpoint import STATE_JSON, CheckpointError

        ck = occ.read(path, kind="ppo", names=tuple(self._models()), optimizer=self.optimizer,
                      ident=occ.identity(self.cfg, self.prompts), force=force)
        try:
            controller = est.kl_controller(ck.state["kl_controller"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{ck.path / STATE_JSON}: bad kl_controller ({e})") from None
        saved = ck.state.get("config") if isinstance(ck.state.get("config"), dict) else {}
        if any(saved.get(k) != getattr(self.cfg, k) for k in KL_CONTROLLER_KEYS):
            # Forced with new KL settings (the advice after a KL stop): they take effect.
            controller = self.kl_ctl
            self.log(f"KL controller restarted from this run's settings ({', '.join(KL_CONTROLLER_KEYS)}), not the checkpoint's")
        occ.apply(ck, self._models(), self.optimizer)
        self.kl_ctl = controller
        self.log(f"resumed from {ck.path} at round {ck.state['step']}")
        return ck.state["step"]


def _round_line(m: dict) -> str:
    used = m.get("reward/model", m.get("reward/used"))
    return (f"round {m['step']}: reward {used:.3f} (ground truth {m['reward/ground_truth']:.3f}), KL {m['kl']:.2f} "
            f"(β {m['kl_coef']:.3g}), entropy {m['entropy']:.2f}, clip {m.get('clip_frac', float('nan')):.2f}, "
            f"value loss {m.get('value_loss', float('nan')):.3f}, EV {m['explained_variance']:.2f}, "
            f"{m['rollout_s']:.1f}+{m['train_s']:.1f} s")
