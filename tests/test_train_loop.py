"""The loop: accumulation equals one big batch, resume equals the uninterrupted run (RNG and
counters included), NaN steps are skipped and never saved and too many in a row stop the run,
SFT and DPO move their metrics the right way."""

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from dpokit.config import TrainConfig
from dpokit.data.collate import TokenizedPair
from dpokit.testing import tiny_model, tiny_tokenizer
from dpokit.train import checkpoint as ckpt
from dpokit.train.loop import StepOrder, Trainer, TrainingDiverged
from dpokit.train.metrics import read_metrics
from dpokit.train.prepare import PreparedData


def tiny_pairs(n: int, seed: int = 0) -> list[TokenizedPair]:
    rng = random.Random(seed)
    items = []
    for i in range(n):
        prompt = [rng.randrange(0, 256) for _ in range(rng.randint(2, 6))]
        chosen = [rng.randrange(0, 128) for _ in range(rng.randint(1, 5))] + [258]
        rejected = [rng.randrange(128, 256) for _ in range(rng.randint(1, 5))] + [258]
        items.append(TokenizedPair(prompt, chosen, rejected, i))
    return items


def make_cfg(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(
        output_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"), lr=1e-3, schedule="linear",
        warmup_steps=1, batch_size=4, max_steps=3, progress=False, reference="cached", seed=3, packing=False,
    )
    base.update(kw)
    return TrainConfig(**base)


def make_trainer(cfg, n_train=16, n_eval=4, model_seed=0) -> Trainer:
    data = PreparedData(tiny_pairs(n_train), tiny_pairs(n_eval, seed=99))
    return Trainer(cfg, model=tiny_model(seed=model_seed), tokenizer=tiny_tokenizer(), data=data, log=lambda *a: None)


def weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol), k


def test_step_order_covers_each_pair_once_per_epoch():
    order = StepOrder(10, 4, seed=1)
    assert order.steps_per_epoch == 3
    epoch0 = sum((order.indices(s) for s in range(3)), [])
    epoch1 = sum((order.indices(s) for s in range(3, 6)), [])
    assert sorted(epoch0) == list(range(10)) == sorted(epoch1)
    assert epoch0 != epoch1  # reshuffled
    assert StepOrder(10, 4, seed=1).indices(4) == order.indices(4)  # a function of the step alone


def test_dpo_starts_at_ln2(tmp_path):
    trainer = make_trainer(make_cfg(tmp_path, max_steps=1))
    record = trainer.train_step(0)
    assert record["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert record["rewards/margins"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("reference", ["cached", "copy"])
def test_bf16_autocast_run_starts_at_ln2(tmp_path, reference):
    """The reference is computed under the same autocast as the policy (and cached under its
    own key), so a bf16 run also starts at h = 0; an fp32 reference would not."""
    trainer = make_trainer(make_cfg(tmp_path, max_steps=1, autocast_bf16=True, reference=reference))
    record = trainer.train_step(0)
    assert record["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert record["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    if reference == "cached":
        fp32 = make_trainer(make_cfg(tmp_path, max_steps=1))
        assert fp32.ref_train.path != trainer.ref_train.path
        bf16_ref = torch.cat(trainer.ref_train.logps({"pair_index": torch.arange(8)}))
        fp32_ref = torch.cat(fp32.ref_train.logps({"pair_index": torch.arange(8)}))
        assert (bf16_ref - fp32_ref).abs().max() > 1e-3  # the two keys hold different numbers


def grads_seen_by_optimizer(trainer, steps: int) -> tuple[list[dict], list[dict]]:
    """(records, gradients) of `steps` train steps; gradients as the optimizer sees them."""
    seen = []

    def capture(optimizer, args, kwargs):
        seen.append({n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None})

    trainer.optimizer.register_step_pre_hook(capture)
    return [trainer.train_step(s) for s in range(steps)], seen


def assert_same_grads(a: dict, b: dict) -> None:
    """Gradients summed in a different order: fp32 rounding, ~1e-7 relative per addition, so 1e-5
    relative to each tensor's scale (not to each element: an element near 0 has no scale of its own)."""
    assert a.keys() == b.keys() and a
    for name in a:
        scale = float(b[name].abs().max())
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-5 * scale + 1e-12, msg=name)


@pytest.mark.parametrize("packing", [False, True])
def test_grad_accumulation_equals_one_big_batch(tmp_path, packing):
    """7 pairs as micro-batches of 3 + 3 + 1 give the gradient of one batch of 7: each pair's loss is
    divided by the pairs of the whole step, so a per-micro-batch mean (which would weight the lone
    pair 3x) fails here, where equal micro-batches could not tell the two apart.

    The invariant is about the gradient, so that is compared, before any optimizer step. AdamW
    turns a 1e-7 gradient difference into a full-size update of an element whose gradient is near
    0, so weights after the step are not compared element-wise; the next step's loss is (it moves
    smoothly with the weights)."""
    kw = dict(max_steps=2, packing=packing)
    a = make_trainer(make_cfg(tmp_path / "a", batch_size=3, grad_accum=3, **kw), n_train=7)
    b = make_trainer(make_cfg(tmp_path / "b", batch_size=9, grad_accum=1, **kw), n_train=7)
    assert [len(m) for m in a._microbatches([a.data.train[i] for i in a.order.indices(0)])] == [3, 3, 1]
    ra, ga = grads_seen_by_optimizer(a, 2)
    rb, gb = grads_seen_by_optimizer(b, 2)
    assert_same_grads(ga[0], gb[0])
    for key in ("loss", "rewards/margins", "rewards/accuracies", "logps/chosen", "grad_norm"):
        assert ra[0][key] == pytest.approx(rb[0][key], rel=1e-5, abs=1e-6), key
    assert ra[1]["loss"] != pytest.approx(ra[0]["loss"], abs=1e-4)  # the first update did something
    assert ra[1]["loss"] == pytest.approx(rb[1]["loss"], rel=1e-4)


def test_token_sized_microbatches_equal_one_big_batch(tmp_path):
    """microbatch_tokens splits the step's 8 pairs into several micro-batches by packed tokens
    (tiny pairs are 5-17 tokens); the step equals one batch of 8: metrics and the gradient the
    optimizer sees (compared as in the accumulation test above)."""
    a = make_trainer(make_cfg(tmp_path / "a", batch_size=8, microbatch_tokens=30, max_steps=2, packing=True))
    b = make_trainer(make_cfg(tmp_path / "b", batch_size=8, max_steps=2, packing=True))
    sizes = [len(mb) for mb in a._microbatches([a.data.train[i] for i in a.order.indices(0)])]
    assert len(sizes) > 2 and sum(sizes) == 8 and len(set(sizes)) > 1
    ra, ga = grads_seen_by_optimizer(a, 2)
    rb, gb = grads_seen_by_optimizer(b, 2)
    assert_same_grads(ga[0], gb[0])
    for key in ("loss", "rewards/margins", "logps/chosen", "grad_norm"):
        assert ra[0][key] == pytest.approx(rb[0][key], rel=1e-5, abs=1e-6), key
    assert ra[1]["loss"] == pytest.approx(rb[1]["loss"], rel=1e-4)
    assert a.evaluate(2)["loss"] == pytest.approx(b.evaluate(2)["loss"], rel=1e-4)


@pytest.mark.parametrize("packing,extra", [(True, {}), (False, {}), (True, {"optimizer_in_backward": True, "max_grad_norm": 0.0})])
def test_resume_equals_uninterrupted_run(tmp_path, packing, extra):
    full = make_trainer(make_cfg(tmp_path / "full", max_steps=6, save_every=3, packing=packing, **extra))
    full.fit()
    full_losses = [r["loss"] for r in read_metrics(full.run_dir / "metrics.jsonl") if r["split"] == "train"]
    full_weights = weights(full.model)

    # Second run: stop after step 3 (checkpoint), then a fresh process-like trainer resumes.
    part_cfg = make_cfg(tmp_path / "part", max_steps=6, save_every=3, packing=packing, **extra)
    part = make_trainer(part_cfg)
    for s in range(3):
        part.train_step(s)
    part.save(3)
    resumed = make_trainer(part_cfg)  # starts from the initial weights; the checkpoint must win
    resumed.fit(resume="latest")
    resumed_losses = [r["loss"] for r in read_metrics(resumed.run_dir / "metrics.jsonl") if r["split"] == "train"]
    assert resumed_losses == pytest.approx(full_losses[3:], rel=1e-6)
    assert_identical_weights(full_weights, weights(resumed.model))


def assert_identical_weights(a, b):
    """Bit for bit: a resume runs the very same operations as the uninterrupted run."""
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def nan_loss_on_steps(trainer, monkeypatch, steps: set[int]) -> None:
    """The loss is NaN on these optimizer steps (1-based; counts _loss calls, so one
    micro-batch per step and no evaluation before the last of them)."""
    real, calls = trainer._loss, {"n": 0}

    def loss(items, reference, votes, *args, **kwargs):
        losses, sums = real(items, reference, votes, *args, **kwargs)
        calls["n"] += 1
        return (losses * float("nan") if calls["n"] in steps else losses), sums

    monkeypatch.setattr(trainer, "_loss", loss)


def test_resume_with_dropout_restores_the_rng_exactly(tmp_path):
    """LoRA dropout draws masks from the torch RNG every step: a resume that did not restore
    the RNG state would give steps 4-6 other masks, hence other weights."""
    from dpokit.config import LoraConfig
    from dpokit.models import apply_lora

    def lora_trainer(name):
        cfg = make_cfg(tmp_path / name, max_steps=6, save_every=3, lora=LoraConfig(r=4, alpha=8, dropout=0.5))
        data = PreparedData(tiny_pairs(16), [])
        return Trainer(cfg, model=apply_lora(tiny_model(), cfg.lora), tokenizer=tiny_tokenizer(), data=data, log=lambda *a: None)

    full = lora_trainer("full")
    full.fit()
    part = lora_trainer("part")
    for s in range(3):
        part.train_step(s)
    part.save(3)
    resumed = lora_trainer("part")
    resumed.fit(resume="latest")
    assert_identical_weights(weights(full.model), weights(resumed.model))


def test_resume_keeps_the_step_and_skip_counters(tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path, max_steps=6, save_every=3)
    part = make_trainer(cfg)
    nan_loss_on_steps(part, monkeypatch, {2})
    for s in range(3):
        part.train_step(s)
    part.save(3)
    resumed = make_trainer(cfg)
    result = resumed.fit(resume="latest")
    assert [r["step"] for r in read_metrics(resumed.run_dir / "metrics.jsonl") if r["split"] == "train"] == [4, 5, 6]
    assert result.summary["skipped_steps"] == 1


def test_resume_restores_python_numpy_and_torch_rng(tmp_path):
    trainer = make_trainer(make_cfg(tmp_path, max_steps=4))
    trainer.train_step(0)
    random.random(), np.random.rand()  # the loop draws from neither: move them off their seeds
    trainer.save(1)
    expected = (random.random(), np.random.rand(), torch.rand(3))  # drawn from the saved states
    again = make_trainer(make_cfg(tmp_path, max_steps=4))  # reseeds every generator
    again.resume_from(ckpt.list_checkpoints(again.run_dir)[-1])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_resume_restores_the_cuda_rng(tmp_path):
    """Dropout on a GPU draws from the CUDA generator, saved as rng.safetensors 'cuda.<i>'."""
    trainer = make_trainer(make_cfg(tmp_path, max_steps=4))
    torch.cuda.manual_seed_all(7)
    torch.rand(5, device="cuda")  # off the seed
    trainer.save(1)
    expected = torch.rand(5, device="cuda")
    again = make_trainer(make_cfg(tmp_path, max_steps=4))
    torch.cuda.manual_seed_all(8)
    again.resume_from(ckpt.list_checkpoints(again.run_dir)[-1])
    assert torch.equal(torch.rand(5, device="cuda"), expected)


def test_isolated_skips_reset_the_count_and_the_run_finishes(tmp_path, monkeypatch):
    """max_consecutive_skips=2 with steps 2 and 4 skipped: never two in a row, so the run ends
    normally; no checkpoint is written at a skipped step."""
    trainer = make_trainer(make_cfg(tmp_path, max_steps=6, save_every=1, keep_checkpoints=0, max_consecutive_skips=2))
    nan_loss_on_steps(trainer, monkeypatch, {2, 4})
    result = trainer.fit()
    assert result.summary["skipped_steps"] == 2 and result.summary["stopped"] is None
    assert (trainer.run_dir / "final" / "model.safetensors").exists()
    assert [p.name for p in ckpt.list_checkpoints(trainer.run_dir)] == [f"checkpoint-00000{s}" for s in (1, 3, 5)]


def test_consecutive_skips_stop_the_run(tmp_path, monkeypatch):
    trainer = make_trainer(make_cfg(tmp_path, max_steps=6, save_every=1, max_consecutive_skips=2))
    nan_loss_on_steps(trainer, monkeypatch, {3, 4})
    with pytest.raises(TrainingDiverged, match="steps 3-4"):
        trainer.fit()
    assert not (trainer.run_dir / "final").exists()
    assert [p.name for p in ckpt.list_checkpoints(trainer.run_dir)] == ["checkpoint-000001", "checkpoint-000002"]


def test_nan_step_is_skipped_counted_and_not_saved(tmp_path, monkeypatch):
    trainer = make_trainer(make_cfg(tmp_path, max_steps=3))
    real = trainer._loss
    calls = {"n": 0}

    def flaky(items, reference, votes, *args, **kwargs):
        losses, sums = real(items, reference, votes, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:  # second optimizer step
            losses = losses * float("nan")
        return losses, sums

    monkeypatch.setattr(trainer, "_loss", flaky)
    trainer.train_step(0)
    before = weights(trainer.model)
    record = trainer.train_step(1)
    assert record["skipped"] and trainer.skipped_steps == 1
    assert_same_weights(before, weights(trainer.model), atol=0)
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError):
        trainer.save(2)
    assert ckpt.list_checkpoints(trainer.run_dir) == []
    assert not any(p.name.startswith(".") for p in trainer.run_dir.iterdir())


def test_checkpoint_write_failure_leaves_nothing(tmp_path):
    def boom(tmp):
        (tmp / "partial").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        ckpt.atomic_directory(tmp_path / "checkpoint-000001", boom)
    assert list(tmp_path.iterdir()) == []


def test_dpo_learns_the_preference_and_writes_its_records(tmp_path):
    cfg = make_cfg(tmp_path, max_steps=12, lr=3e-3, beta=0.5, eval_every=6, schedule="constant", warmup_steps=0)
    trainer = make_trainer(cfg)
    result = trainer.fit()
    records = read_metrics(trainer.run_dir / "metrics.jsonl")
    train = [r for r in records if r["split"] == "train"]
    evals = [r for r in records if r["split"] == "eval"]
    assert len(train) == 12 and len(evals) == 2
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                "logps/chosen", "logps/rejected", "lr", "grad_norm", "tokens_per_s"):
        assert key in train[0]
    assert train[-1]["loss"] < train[0]["loss"] - 0.1
    assert train[-1]["rewards/margins"] > 0.5
    assert (trainer.run_dir / "final" / "model.safetensors").exists()
    assert any((trainer.run_dir / "tb").iterdir())
    assert result.summary["skipped_steps"] == 0


def test_sft_lowers_nll(tmp_path):
    cfg = make_cfg(tmp_path, objective="sft", max_steps=10, lr=3e-3, schedule="constant", warmup_steps=0)
    trainer = make_trainer(cfg)
    first = trainer.train_step(0)["loss"]
    for s in range(1, 10):
        last = trainer.train_step(s)["loss"]
    assert last < first - 0.5
    assert trainer.ref_train is None  # SFT needs no reference


@pytest.mark.parametrize("reference", ["adapter", "cached", "copy"])
def test_lora_training_saves_a_peft_adapter(tmp_path, reference):
    from peft import PeftModel

    from dpokit.models import LoraSettings, apply_lora

    cfg = make_cfg(tmp_path, max_steps=3, reference=reference, optimizer="rmsprop", lr=1e-2)
    cfg.lora.r = 4
    model = apply_lora(tiny_model(), LoraSettings(r=4, alpha=8))
    data = PreparedData(tiny_pairs(8), [])
    trainer = Trainer(cfg, model=model, tokenizer=tiny_tokenizer(), data=data, log=lambda *a: None)
    first = trainer.train_step(0)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    for s in (1, 2):
        last = trainer.train_step(s)
    assert last["rewards/margins"] != pytest.approx(0.0, abs=1e-4)
    trainer.save(3)
    adapter_dir = ckpt.list_checkpoints(trainer.run_dir)[-1] / "model"
    assert (adapter_dir / "adapter_model.safetensors").exists()
    reloaded = PeftModel.from_pretrained(tiny_model(), adapter_dir)
    ids = torch.tensor([[1, 2, 3, 4]])
    trainer.model.eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, trainer.model(ids).logits, atol=1e-5)
