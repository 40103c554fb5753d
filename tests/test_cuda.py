"""What must hold on a GPU (skipped where there is none; benchmarks/gpu_check.sh runs them the
day one is lent): the packed prefix-sharing path equals the padded one under CUDA's attention
kernels, training runs there in bf16 autocast from ln 2, and the cached reference answers on the
policy's device."""

from __future__ import annotations

import math

import pytest
import torch

from dpokit.testing import tiny_model

from dpokit.data.collate import collate_pairs
from dpokit.logprobs import sequence_logps
from test_packing import PAD, RTOL, mixed_pairs

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)"),
]


def test_packed_logps_equal_padded_on_the_gpu():
    """SDPA with the packed block mask (CUDA picks the memory-efficient kernel for an arbitrary
    mask) against the padded batch: float32, same tolerance as on the CPU."""
    from dpokit.packing import pack_pairs, packed_pair_logps

    model = tiny_model().cuda()
    items = mixed_pairs()
    batch = {k: v.cuda() for k, v in collate_pairs(items, PAD).items()}
    with torch.no_grad():
        plain = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"]).split_pairs()
        packed = packed_pair_logps(model, pack_pairs(items, PAD, 96, mask_dtype=torch.float32).to("cuda"))
    for a, b in zip(plain[:2], packed[:2]):
        torch.testing.assert_close(b.cpu(), a.cpu(), rtol=RTOL, atol=1e-3)


def test_dpo_trains_on_the_gpu_in_bf16_from_ln2(tmp_path):
    """mixed_precision auto = bf16 autocast on CUDA; the cached reference is computed under the
    same autocast, so the first loss is ln 2 up to bf16 rounding of identical computations (0)."""
    from pathlib import Path

    from dpokit.config import TrainConfig
    from dpokit.testing import tiny_tokenizer
    from dpokit.train.loop import train
    from dpokit.train.metrics import read_metrics

    tiny_model().save_pretrained(tmp_path / "lm")
    tiny_tokenizer().save_pretrained(tmp_path / "lm")
    data = Path(__file__).resolve().parents[1] / "examples" / "pairs.jsonl"
    cfg = TrainConfig(model=str(tmp_path / "lm"), data=str(data), output_dir=str(tmp_path / "run"), max_steps=3,
                      batch_size=4, lr=1e-3, progress=False, cache_dir=str(tmp_path / "cache"), eval_fraction=0.25)
    result = train(cfg)
    assert next(result.model.parameters()).device.type == "cuda"
    assert result.summary["train_last"]["loss"] < math.log(2)
    first = read_metrics(tmp_path / "run" / "metrics.jsonl")[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "autocast_bf16: true" in saved


def test_cached_reference_answers_on_the_policy_device(tmp_path):
    from dpokit.reference import precompute_reference

    model = tiny_model().cuda()
    items = mixed_pairs()
    cache = precompute_reference(model, items, PAD, cache_dir=tmp_path, key="k", progress=False, pack_tokens=96)
    chosen, rejected = cache.pair_logps(items[:2], PAD)
    assert chosen.device.type == rejected.device.type == "cuda"
