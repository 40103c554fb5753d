"""The training loop shared by SFT, every pairwise loss and the Bradley–Terry reward model.

Order of pairs: a function of the step alone (dpokit.train.order), which is what makes
`resume` reproduce the uninterrupted run exactly (with the optimizer, scheduler and RNG states
from the checkpoint).

A step whose loss or gradient is not finite is skipped (no update) and counted. After
`max_consecutive_skips` such steps in a row the run stops with `TrainingDiverged`: no final
model is written, train_summary.json says why, and the checkpoints kept are those written
after an applied update (none is written while a streak of skips is running).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from dpokit import accel
from dpokit.config import TrainConfig, save_config, validate_train_config
from dpokit.data.collate import resolve_pad_id
from dpokit.train import checkpoint as ckpt
from dpokit.train import checkpoint_sharded as sharded
from dpokit.train import rundir
from dpokit.train.backward_step import BackwardStepper
from dpokit.train.metrics import MetricSums, MetricsWriter, grad_norm, json_safe
from dpokit.train.optim import build_optimizer, build_scheduler
from dpokit.train.order import StepOrder, pairs_per_step, total_steps
from dpokit.train.parallel_checks import check_data_parallel
from dpokit.train.prepare import PreparedData, build_reference, prepare_data
from dpokit.train.step import (
    kto_logratios,
    kto_step,
    pairwise_step,
    processed_tokens,
    reward_model_step,
    rrhf_step,
    sft_step,
)


class _NoWriter:
    """Where the metrics of ranks other than 0 go: they are already reduced onto rank 0."""

    def write(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite steps; the message says which and what is kept."""


@dataclass
class TrainResult:
    model: object
    tokenizer: object
    run_dir: Path
    final_dir: Path
    summary: dict


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _silent(*args, **kwargs) -> None:
    """The log of ranks other than 0: one process speaks."""


def _zero_loss(model) -> torch.Tensor:
    # Touches every trainable parameter, so the engine's gradient reduction completes.
    return sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0


def load_trainable_model(cfg: TrainConfig):
    """(model, tokenizer) to train: the causal LM (with LoRA when asked), or for objective=rm a
    scalar-head reward model on its backbone (dpokit.rlhf.reward_model)."""
    if cfg.objective == "rm":
        from dpokit.rlhf.reward_model import build_reward_model

        return build_reward_model(cfg.model, dtype=cfg.dtype, zero_head=True)
    from dpokit.models import load_model

    return load_model(cfg.model, dtype=cfg.dtype, lora=cfg.lora)


class Trainer:
    def _reward_head(self):
        """The reward model's scalar head (objective=rm), for its own learning rate (head_lr)."""
        if self.cfg.objective != "rm":
            return None
        from dpokit.rlhf.reward_model import backbone_and_head

        return backbone_and_head(self.model)[1]

    def __init__(self, cfg: TrainConfig, *, model=None, tokenizer=None, data: PreparedData | None = None, log=print):
        validate_train_config(cfg)
        self.place = accel.current()
        cfg = accel.resolve(cfg, self.place)
        check_data_parallel(cfg, self.place)
        self.cfg, self.log = cfg, (log if self.place.is_main else _silent)
        log = self.log
        from dpokit.runtime import configure_malloc

        configure_malloc(cfg.tune_malloc)  # before the reference precompute: it runs under it too
        seed_everything(cfg.seed)
        self.run_dir = Path(cfg.output_dir)  # files go in only from fit(), after rundir's checks
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if tokenizer is None:
            from dpokit.models import load_tokenizer

            tokenizer = load_tokenizer(cfg.model)
        # The data first: a data error is reported before a model is loaded.
        self.data = data or prepare_data(cfg, tokenizer, log)
        if model is None:
            model, tokenizer = load_trainable_model(cfg)
        self.model, self.tokenizer = model.to(self.place.device), tokenizer
        self.pad_id = resolve_pad_id(tokenizer)
        self.ref_train = self.ref_eval = None
        self._z0 = None  # objective=kto: the reference point of the step being taken
        if cfg.objective == "kto":
            self._check_kto_weights()
        if cfg.objective in ("dpo", "kto"):
            self.ref_train, self.ref_eval = build_reference(cfg, model, self.data, self.pad_id, log)
        if cfg.gradient_checkpointing:
            # Non-reentrant: works with frozen inputs and with the per-parameter hooks below.
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # The engine's wrapper (DDP, FSDP) around the policy, or the policy itself in one process.
        self.accelerator, self.engine = None, model
        if self.place.fsdp:
            self.engine = accel.shard_model(accel.FunctionRunner(model))
        elif self.place.distributed:
            self.accelerator = accel.make_accelerator()
            self.engine = self.accelerator.prepare_model(accel.FunctionRunner(model))
        # Passes without gradients: the bare policy, except under FSDP, where only the engine
        # holds whole weights (it gathers them layer by layer in every pass).
        self.passive = self.engine if self.place.fsdp else model
        # A step takes batch_size × grad_accum pairs on each rank: the global batch.
        self.order = StepOrder(len(self.data.train), pairs_per_step(cfg, self.place), cfg.seed)
        self.total_steps = total_steps(cfg, self.order)
        self.optimizer = build_optimizer(model.parameters(), cfg, head=self._reward_head())
        self.scheduler = build_scheduler(self.optimizer, cfg, self.total_steps)
        self.stepper = BackwardStepper(self.optimizer) if cfg.optimizer_in_backward else None
        self._inbwd_norm = float("nan")
        self.skipped_steps, self.consecutive_skips = 0, 0
        self._identity, self._last_train = None, {}

    # -- one optimizer step -------------------------------------------------------------
    def _loss(self, items, reference, votes, labels=None, model=None):
        """Losses and metric sums of one micro-batch; `model`: the engine's wrapper (default,
        for passes with gradients) or the bare policy (passes without: no engine collectives)."""
        model = self.engine if model is None else model
        if self.cfg.objective == "dpo":
            return pairwise_step(model, reference, items, self.pad_id, self.cfg, votes=votes)
        if self.cfg.objective == "kto":
            return kto_step(model, reference, items, self.pad_id, self.cfg, labels=labels, z0=self._z0)
        if self.cfg.objective == "rm":
            return reward_model_step(model, items, self.pad_id, self.cfg)
        if self.cfg.objective == "rrhf":
            return rrhf_step(model, items, self.pad_id, self.cfg)
        return sft_step(model, items, self.pad_id, self.cfg)

    def train_step(self, step: int) -> dict:
        cfg = self.cfg
        items = [self.data.train[i] for i in self.order.indices(step)]
        start = time.perf_counter()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        if self.place.world_size > 1 or self.place.fsdp:
            sums, finite = self._data_parallel_backward(items)
        else:
            sums, finite = self._backward_all(items)
        norm, applied = self._update(finite)
        if not applied:
            # NaN/inf: the update is dropped, counted and reported; weights stay as they were.
            self.skipped_steps += 1
            self.log(f"step {step + 1}: non-finite loss or gradient, update skipped ({self.skipped_steps} so far)")
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - start
        # A non-finite loss has no meaningful means (only part of the step may have run): NaN,
        # which metrics.jsonl writes as null. A finite loss with a non-finite gradient keeps them.
        means = sums.means() if finite else {"loss": float("nan")}
        record = {"step": step + 1, "split": "train", **means, "lr": lr, "grad_norm": norm}
        record["tokens_per_s"] = processed_tokens(items, cfg, pairs=cfg.objective != "sft") / elapsed
        record["pairs_per_s"] = len(items) / elapsed
        record["skipped"] = not applied
        return record

    def _backward_all(self, items: list) -> tuple[MetricSums, bool]:
        """One process: every micro-batch's loss backward, scaled by the pairs of the step."""
        sums, micro_batches = MetricSums(), self._microbatches(items)
        self._z0 = self._kto_reference_point(micro_batches, self.ref_train)
        for micro in micro_batches:
            losses, micro_sums = self._loss(micro, self.ref_train, self.data.train_votes, self.data.train_labels)
            if not torch.isfinite(losses).all():
                return sums, False
            # Sum over the micro-batch / pairs in the step: accumulation k×b equals one batch of k·b.
            self._backward(losses.sum() / len(items))
            sums.merge(micro_sums)
        return sums, True

    def _data_parallel_backward(self, items: list) -> tuple[MetricSums, bool]:
        """Each rank takes its share of the step's pairs; the engine all-reduces (averages) the
        gradients at the last micro-batch's backward, so each rank scales its loss sum by
        world_size / pairs-in-the-step: the average is then the sum over the step's pairs divided
        by their number, as in one process. Every rank runs the same collectives whatever its
        data: a non-finite loss still goes backward (masked; the step is then skipped on all
        ranks), and a rank with fewer passes than another runs filler ones (`_equal_passes`)."""
        mine, scale = accel.shard(items, self.place), self.place.world_size / len(items)
        micro_batches = self._microbatches(mine) if mine else []
        self._z0 = self._kto_reference_point(micro_batches, self.ref_train, filler=items[:1])
        sums, finite = MetricSums(), True
        passes = self._equal_passes(micro_batches, items[:1])
        for k, (micro, real) in enumerate(passes):
            last = k == len(passes) - 1
            with contextlib.nullcontext() if last else accel.no_sync(self.accelerator, self.engine, self.place):
                if not micro:
                    self._backward(accel.call(self.engine, _zero_loss))
                    continue
                losses, micro_sums = self._loss(micro, self.ref_train, self.data.train_votes, self.data.train_labels)
                ok = torch.isfinite(losses)
                finite = finite and (bool(ok.all()) or not real)
                self._backward(torch.where(ok, losses, torch.zeros_like(losses)).sum() * (scale if real else 0.0))
                if real:
                    sums.merge(micro_sums)
        return sums.summed_across(self.place), accel.all_true(finite, self.place)

    def _equal_passes(self, batches: list[list], filler: list) -> list[tuple[list, bool]]:
        """(micro-batch, counts) for each engine pass of this rank. DDP: its micro-batches, or
        one empty pass (zero gradients, for the all-reduce) when it has none. FSDP: every pass
        gathers the weights layer by layer, a collective, so every rank runs as many passes as
        the rank with the most; its extra passes compute `filler` (a pair of the same step or
        split) with weight 0 and count for nothing."""
        if not self.place.fsdp:
            return [(b, True) for b in batches] or [([], False)]
        n = accel.max_across(len(batches), self.place)
        return [(b, True) for b in batches] + [(filler, False)] * (n - len(batches))

    @torch.no_grad()
    def _kto_reference_point(self, micro_batches: list[list], reference, filler=(), always: bool = False):
        """objective=kto: z0 of the step (dpokit.losses_unpaired), over the mismatched pairs of
        every micro-batch on every rank, summed before dividing: a pass without gradients
        first. None where one micro-batch in one process is the whole step (unless `always`):
        the loss then takes z0 from its own forward, the same number at no extra cost."""
        if self.cfg.objective != "kto" or (len(micro_batches) == 1 and self.place.world_size == 1 and not always):
            return None
        from dpokit.losses_unpaired import kto_reference_point

        total = torch.zeros(2, dtype=torch.float64)
        for micro, real in self._equal_passes(micro_batches, list(filler)):
            if micro:
                mismatched = kto_logratios(self.passive, reference, micro, self.pad_id, self.cfg)[1]
                total += torch.tensor([float(mismatched.sum()), len(micro)], dtype=torch.float64) * real
        total = accel.sum_across(total, self.place)
        return kto_reference_point(float(total[0]), int(total[1]))

    def _check_kto_weights(self) -> None:
        """Ethayarajh et al. 2024, eq. 8, on the training labels: a warning, not an error."""
        from dpokit.losses_unpaired import check_kto_weights

        n_good = sum(self.data.train_labels.values())
        n_bad = len(self.data.train_labels) - n_good
        problem = check_kto_weights(n_good, n_bad, self.cfg.kto_desirable_weight, self.cfg.kto_undesirable_weight)
        self.log(f"KTO: {n_good} desirable / {n_bad} undesirable training examples"
                 + (f"; warning: {problem}" if problem else "; weights within eq. 8's range"))

    def _microbatches(self, items: list) -> list[list]:
        """Micro-batches of `batch_size` pairs, or, with `microbatch_tokens`, of at most that many
        packed tokens each (a longer pair alone): activation memory then stays bounded however
        long the pairs are. Losses are scaled by the pairs of the whole step either way."""
        if self.cfg.microbatch_tokens > 0:
            from dpokit.packing import plan_microbatches, segment_length

            budget = max(self.cfg.microbatch_tokens, max(segment_length(p) for p in items))
            return plan_microbatches(items, budget)
        return [items[m : m + self.cfg.batch_size] for m in range(0, len(items), self.cfg.batch_size)]

    def _backward(self, loss: torch.Tensor) -> None:
        if self.stepper is None:
            loss.backward()
            return
        self.stepper.begin()  # each parameter is updated as its gradient completes
        try:
            loss.backward()
        finally:
            self._inbwd_norm = self.stepper.end()

    def _update(self, finite: bool) -> tuple[float, bool]:
        """(pre-clipping gradient norm, whether the update was applied)."""
        if self.stepper is not None:  # already applied during backward
            if not finite:
                return float("nan"), False
            return self._inbwd_norm, self.stepper.all_finite
        if not finite:
            return float("nan"), False
        params = [p for p in self.model.parameters() if p.requires_grad]
        # clip_grad_norm_ returns the pre-clipping norm: no second pass over the gradients.
        if self.cfg.max_grad_norm > 0:
            clip = self.accelerator.clip_grad_norm_ if self.accelerator else torch.nn.utils.clip_grad_norm_
            norm = accel.to_float(clip(params, self.cfg.max_grad_norm))  # FSDP: a DTensor
        else:
            norm = accel.total_grad_norm(params) if self.place.fsdp else grad_norm(params)
        if not math.isfinite(norm):
            return norm, False
        self.optimizer.step()
        return norm, True

    # -- evaluation ---------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, step: int) -> dict | None:
        if not self.data.eval:
            return None
        was_training = self.model.training
        self.model.eval()
        sums, mine, filler = MetricSums(), accel.shard(self.data.eval, self.place), self.data.eval[:1]
        # KTO: one reference point for the whole evaluation set, however it is batched.
        batches = [mine[s : s + self.cfg.batch_size] for s in range(0, len(mine), self.cfg.batch_size)]
        self._z0 = self._kto_reference_point(batches, self.ref_eval, filler=filler, always=True)
        micro_batches = [micro for batch in batches for micro in self._microbatches(batch)]
        for micro, real in self._equal_passes(micro_batches, filler):
            if micro:
                _, micro_sums = self._loss(micro, self.ref_eval, self.data.eval_votes, self.data.eval_labels, model=self.passive)
                if real:
                    sums.merge(micro_sums)
        self.model.train(was_training)
        return {"step": step, "split": "eval", **sums.summed_across(self.place).means()}

    # -- the run ------------------------------------------------------------------------
    def identity(self) -> dict:
        if self._identity is None:
            self._identity = rundir.run_identity(self.cfg, self.data, pairs_per_step=self.order.per_step)
        return self._identity

    def resume_from(self, path: Path, force: bool = False) -> int:
        """Restore checkpoint `path` (refused if made on other data/config, unless `force`)."""
        found = ckpt.read_checkpoint(path, self.optimizer, self.scheduler, sharded=self.place.fsdp)
        changes = rundir.resume_mismatches(found.state, self.identity())
        if changes and not force:
            raise ckpt.CheckpointError(
                f"{path}: made with different {'; '.join(changes)}; resuming would not continue that run "
                "(--force resumes anyway; or start a new output_dir)"
            )
        if changes:
            self.log(f"warning: --force: resuming {path} despite {'; '.join(changes)}")
        restore = sharded.restore_sharded if self.place.fsdp else ckpt.restore_checkpoint
        restore(found, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler)
        self.skipped_steps, self.consecutive_skips = found.state["skipped_steps"], 0
        self.log(f"resumed from {path} at step {found.state['step']}")
        return found.state["step"]

    def save(self, step: int) -> None:
        """Rank 0 writes (under DDP every rank holds the same weights and optimizer state);
        under FSDP every rank writes its shards."""
        state = {"skipped_steps": self.skipped_steps, "total_steps": self.total_steps, **self.identity()}
        parts = dict(model=self.model, tokenizer=self.tokenizer, optimizer=self.optimizer, scheduler=self.scheduler, state=state, cfg=self.cfg)
        if self.place.fsdp:
            sharded.save_sharded_checkpoint(self.run_dir, step, place=self.place, **parts)
        elif self.place.is_main:
            ckpt.save_checkpoint(self.run_dir, step, **parts)
        if self.place.is_main:
            ckpt.prune_checkpoints(self.run_dir, self.cfg.keep_checkpoints)
        accel.barrier(self.place)

    def fit(self, resume=None, force: bool = False) -> TrainResult:
        """Train to the end. `resume`: "latest" or a checkpoint path; `force`: see dpokit.train.rundir."""
        cfg, main = self.cfg, self.place.is_main
        # Rank 0 tidies the run directory; the others then only look up the checkpoint.
        path = rundir.prepare_run_dir(cfg, resume=resume, force=force, log=self.log) if main else None
        accel.barrier(self.place)
        if not main and resume:
            path = rundir.find_checkpoint(self.run_dir, resume)
        start = self.resume_from(path, force) if path else 0
        if main:
            save_config(cfg, self.run_dir / "config.yaml")
            (self.run_dir / "data_report.json").write_text(json.dumps(self.data.report, indent=2))
        writer = MetricsWriter(self.run_dir, resume_step=start if path else None) if main else _NoWriter()
        bar = tqdm(total=self.total_steps, initial=start, desc=cfg.objective, disable=not (cfg.progress and main), dynamic_ncols=True)
        began = time.time()
        try:
            last_train, last_eval = self._run_steps(start, writer, bar)
            last_eval = self.evaluate(self.total_steps) or last_eval
            if last_eval:
                writer.write(last_eval)
        except TrainingDiverged as e:
            if main:
                self._write_summary(self._summary(self._last_train, None, time.time() - began, stopped=str(e)))
            raise
        finally:
            bar.close()
            writer.close()
        return self._finish(last_train, last_eval, time.time() - began)

    def _run_steps(self, start: int, writer: MetricsWriter, bar) -> tuple[dict, dict | None]:
        cfg, last_eval = self.cfg, None
        for step in range(start, self.total_steps):
            record = self._last_train = self.train_step(step)
            if cfg.log_every and ((step + 1) % cfg.log_every == 0 or step + 1 == self.total_steps or record["skipped"]):
                writer.write(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record.get('rewards/accuracies', float('nan')):.2f}")
            self._check_divergence(record)
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < self.total_steps:
                last_eval = self.evaluate(step + 1)
                if last_eval:
                    writer.write(last_eval)
            # No checkpoint inside a streak of skips: the ones kept come after an applied update.
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < self.total_steps and not self.consecutive_skips:
                self.save(step + 1)
        return self._last_train, last_eval

    def _check_divergence(self, record: dict) -> None:
        self.consecutive_skips = self.consecutive_skips + 1 if record["skipped"] else 0
        n = self.consecutive_skips
        if n < self.cfg.max_consecutive_skips:
            return
        kept = ckpt.list_checkpoints(self.run_dir)
        raise TrainingDiverged(
            f"training diverged: steps {record['step'] - n + 1}-{record['step']} ({n} in a row = max_consecutive_skips) "
            f"had a non-finite loss or gradient; stopped without a final model. "
            f"Last good checkpoint: {kept[-1] if kept else 'none'}. Lower lr (now {self.cfg.lr:g})"
            + (" or set max_grad_norm > 0" if self.cfg.max_grad_norm == 0 else "")
            + (" and continue from it with --resume --force" if kept else "")
        )

    def _summary(self, last_train: dict, last_eval: dict | None, elapsed: float, stopped: str | None = None) -> dict:
        return {
            "objective": self.cfg.objective, "loss": self.cfg.loss, "beta": self.cfg.beta,
            "steps": self.total_steps, "skipped_steps": self.skipped_steps, "stopped": stopped,
            "train_last": last_train, "eval": last_eval, "data": self.data.report, "train_seconds": elapsed,
        }

    def _write_summary(self, summary: dict) -> str:
        # NaN/inf (a skipped step's loss) become null, as in metrics.jsonl: the file stays valid JSON.
        clean = {k: json_safe(v) if isinstance(v, dict) else v for k, v in summary.items()}
        text = json.dumps(clean, indent=2, default=float)
        (self.run_dir / "train_summary.json").write_text(text)
        return text

    def _finish(self, last_train: dict, last_eval: dict | None, elapsed: float) -> TrainResult:
        summary = self._summary(last_train, last_eval, elapsed)
        final, extra = self.run_dir / "final", {}
        if self.place.is_main:
            if self.skipped_steps:
                self.log(f"warning: {self.skipped_steps} step(s) skipped for non-finite loss/gradient")
            extra["train_summary.json"] = self._write_summary(summary)
        if self.place.fsdp:  # the whole weights gathered on rank 0, which writes them
            final = sharded.save_full_model_sharded(self.model, self.tokenizer, final, self.cfg, extra, self.place)
        elif self.place.is_main:
            final = ckpt.save_final_model(self.model, self.tokenizer, final, self.cfg, extra)
        if self.place.is_main:
            self.log(f"saved {final}")
        accel.barrier(self.place)
        return TrainResult(self.model, self.tokenizer, self.run_dir, final, summary)


def train(cfg: TrainConfig, *, resume=None, force: bool = False, model=None, tokenizer=None, data=None, log=print) -> TrainResult:
    """Run SFT or a pairwise objective end to end; returns the trained model and summary.

    `resume`: "latest" or a checkpoint path. `force`: resume despite changed data/config, or
    start afresh over a previous run in output_dir (see dpokit.train.rundir)."""
    validate_train_config(cfg)
    if accel.current().is_main:  # the other ranks wait for rank 0 in Trainer.fit
        rundir.prepare_run_dir(cfg, resume=resume, force=force, log=log)  # refuse before minutes of loading
    trainer = Trainer(cfg, model=model, tokenizer=tokenizer, data=data, log=log)
    return trainer.fit(resume=resume, force=force)
