"""The memory and time model of docs/scaling.md against numbers worked out by hand."""

import pytest

from benchmarks.memory_model import (
    MODELS,
    Model,
    activation_bytes_per_token,
    epoch_hours,
    logits_bytes,
    lora_state_bytes,
    max_pairs_per_microbatch,
    measured_values_per_layer,
    state_bytes_per_param,
)


@pytest.mark.parametrize("scheme, n, expected", [
    ("fp32", 1, 16),  # 4 weights + 4 grads + 8 moments
    ("ddp", 8, 16),  # 2 + 2 + 12, nothing sharded
    ("zero1", 4, 2 + 2 + 3),
    ("zero2", 4, 2 + 0.5 + 3),
    ("zero3", 8, 2),  # 16 / 8
    ("zero3-offload", 8, 0.5),  # (2 + 2) / 8 on the GPU
])
def test_state_bytes_per_param(scheme, n, expected):
    assert state_bytes_per_param(scheme, n) == pytest.approx(expected)


def test_activations_logits_lora_and_epoch_time_by_hand():
    m = Model("toy", params=1e9, hidden=1000, layers=10, vocab=50_000)
    assert activation_bytes_per_token(m, recompute=False, values_per_layer=17) == 17 * 10 * 1000 * 2  # 340 kB
    assert activation_bytes_per_token(m, recompute=True, values_per_layer=17) == (10 + 17) * 1000 * 2
    assert activation_bytes_per_token(m, recompute=False, bytes_per_value=4) == 32 * 10 * 1000 * 4
    assert logits_bytes(m, 10_000) == 50_000 * 4 * 10_000
    assert logits_bytes(m, 10_000, chunk=2048) == 50_000 * 4 * 2048
    assert lora_state_bytes(1e9, 1e6, 8, sharded=True) == 2e9 / 8 + 16e6
    # 1000 pairs × 500 tokens × 1e9 params × (6 + 2) FLOPs = 4e15 FLOPs; 2 GPUs × 1e15 × 0.5 → 4 s.
    assert epoch_hours(m, pairs=1000, tokens_per_pair=500, gpus=2, peak_flops=1e15, mfu=0.5) == pytest.approx(4 / 3600)
    assert epoch_hours(m, pairs=1000, tokens_per_pair=500, gpus=2, peak_flops=1e15, mfu=0.5, train_flops=4) == pytest.approx(3 / 3600)
    # 90% of 10 GB − 4 GB states − one 2048-token logits chunk, over ((10 + 32)·1000·2 B × 500 tokens) per pair.
    free = 9e9 - 4e9 - 50_000 * 4 * 2048
    assert max_pairs_per_microbatch(m, 4e9, 10, 500) == int(free // (42 * 1000 * 2 * 500))
    assert max_pairs_per_microbatch(m, 20e9, 10, 500) == 0


def test_the_135m_entry_is_the_bundled_model():
    m = MODELS["135M"]
    assert (m.hidden, m.layers, m.vocab) == (576, 30, 49152)


def test_the_activation_slope_is_read_from_the_scaling_benchmarks(tmp_path):
    import json

    m = Model("toy", params=1e6, hidden=100, layers=10, vocab=1000)
    # Batch 1 → 3 of 100-token pairs: 200 more tokens, 200·32 values·100·10 layers·4 B = 25.6 MB more.
    batch = [{"x": 1, "tokens_per_pair": 100, "peak_rss_mb": 1000.0}, {"x": 3, "tokens_per_pair": 100, "peak_rss_mb": 1025.6}]
    (tmp_path / "b.json").write_text(json.dumps({"batch_sweep": batch, "length_sweep": []}))
    assert measured_values_per_layer([str(tmp_path / "b.json")], m) == [pytest.approx(32)]
