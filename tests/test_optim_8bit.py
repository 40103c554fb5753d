"""optimizer=adamw8bit (torchao's AdamW8bit): 8-bit moments, an update close to fp32 AdamW's,
and clear errors where it cannot run."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from dpokit.config import ConfigError, TrainConfig, validate_train_config
from dpokit.testing import tiny_model
from dpokit.train.optim import build_optimizer

needs_torchao = pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao not installed (pip install -e '.[lowmem]')")


def _one_step(optimizer_name: str):
    torch.manual_seed(0)
    model = tiny_model(layers=1, width=128)  # 128×260 embedding: blocks of 256 values get quantised
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model.parameters(), TrainConfig(optimizer=optimizer_name, lr=1e-3, weight_decay=0.0))
    ids = torch.randint(0, 256, (4, 24), generator=torch.Generator().manual_seed(1))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    delta = torch.cat([(p.detach() - before[n]).reshape(-1) for n, p in model.named_parameters()])
    return delta, opt


@needs_torchao
def test_8bit_moments_and_an_update_close_to_fp32_adamw():
    """Both runs take one step from the same weights and gradient. Adam's first update is
    lr·m̂/(√v̂+ε) ≈ lr·sign(g); quantising m and v to 8 bits perturbs each element by a few
    percent of its block's largest value, so the two updates point the same way (cosine > 0.99)
    with the same size (norms within 5%). A dropped bias correction or a wrong moment would
    change the size by ~10× (1−β1 = 0.1) or the direction."""
    d8, opt8 = _one_step("adamw8bit")
    d32, _ = _one_step("adamw")
    cosine = float(torch.nn.functional.cosine_similarity(d8, d32, dim=0))
    assert cosine > 0.99
    assert float(d8.norm() / d32.norm()) == pytest.approx(1.0, abs=0.05)
    kinds = {type(s["exp_avg"]).__name__ for s in opt8.state.values()}
    assert "OptimState8bit" in kinds  # the big tensors' moments are 8-bit


def test_8bit_state_cannot_be_checkpointed_yet():
    with pytest.raises(ConfigError, match="save_every=0"):
        validate_train_config(TrainConfig(optimizer="adamw8bit", save_every=10))
    validate_train_config(TrainConfig(optimizer="adamw8bit", save_every=0))


def test_missing_torchao_is_one_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao.optim", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match="pip install torchao"):
        build_optimizer(tiny_model().parameters(), TrainConfig(optimizer="adamw8bit"))


@needs_torchao
def test_8bit_state_inside_backward_matches_the_ordinary_8bit_step(tmp_path):
    """The lowest-memory setting: moments in 8 bits, each parameter updated (and its gradient
    freed) inside backward. The per-parameter update is the optimizer's own, so the weights match
    the ordinary 8-bit step's to rounding."""
    from test_train_loop import assert_same_weights, make_cfg, make_trainer, weights

    kw = dict(max_steps=2, max_grad_norm=0.0, optimizer="adamw8bit", packing=True)
    plain = make_trainer(make_cfg(tmp_path / "plain", **kw))
    inbwd = make_trainer(make_cfg(tmp_path / "inbwd", optimizer_in_backward=True, **kw))
    for step in range(2):
        a, b = plain.train_step(step), inbwd.train_step(step)
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6)
        assert not b["skipped"]
    assert_same_weights(weights(plain.model), weights(inbwd.model), atol=1e-6)
