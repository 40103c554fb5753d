"""Optimizer step inside backward: the same updates as the ordinary step, one gradient alive
at a time, and the combinations it cannot honour rejected."""

import math

import pytest
import torch

from dpokit.config import ConfigError, validate_train_config
from dpokit.train.backward_step import BackwardStepper
from tests.test_train_loop import assert_same_weights, make_cfg, make_trainer, weights


@pytest.mark.parametrize("optimizer", ["adamw", "rmsprop"])
@pytest.mark.parametrize("packing", [False, True])
def test_same_weights_and_metrics_as_the_ordinary_step(tmp_path, optimizer, packing):
    kw = dict(max_steps=4, max_grad_norm=0.0, optimizer=optimizer, packing=packing, weight_decay=0.01)
    plain = make_trainer(make_cfg(tmp_path / "plain", **kw))
    inbwd = make_trainer(make_cfg(tmp_path / "inbwd", optimizer_in_backward=True, **kw))
    for step in range(4):
        a, b = plain.train_step(step), inbwd.train_step(step)
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
        assert b["lr"] == a["lr"] and not b["skipped"]
    # Both runs compute the same gradients in the same backward graph and apply the same optimizer
    # kernel per tensor, so there is no gradient difference for AdamW to amplify: the weights agree
    # to rounding (they are bit-equal on the machines tried), on any CPU.
    assert_same_weights(weights(plain.model), weights(inbwd.model), atol=1e-6)
    # The state an ordinary optimizer would checkpoint is the same too (moments, step counts).
    sa, sb = plain.optimizer.state_dict()["state"], inbwd.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for name in sa[k]:
            torch.testing.assert_close(sb[k][name], sa[k][name], atol=1e-7, rtol=1e-5)
    # And the updates really moved the weights (so equality above is not trivially true).
    fresh = make_trainer(make_cfg(tmp_path / "fresh", **kw))
    moved = max((weights(fresh.model)[k] - v).abs().max() for k, v in weights(inbwd.model).items())
    assert moved > 1e-4


def test_at_most_one_gradient_alive_during_backward(tmp_path):
    trainer = make_trainer(make_cfg(tmp_path, max_grad_norm=0.0, optimizer_in_backward=True))
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    arriving, after = [], []  # other parameters holding a gradient when one arrives / is done
    for p in params:
        p.register_hook(lambda g: arriving.append(sum(q.grad is not None for q in params)) or g)
        p.register_post_accumulate_grad_hook(lambda _: after.append(sum(q.grad is not None for q in params)))
    trainer.train_step(0)
    assert len(after) == len(params)  # every parameter was reached once
    assert max(arriving) == 0 and max(after) == 0  # so at most the arriving one is ever alive
    # Without the stepper, gradients pile up until the optimizer step.
    plain = make_trainer(make_cfg(tmp_path / "plain", max_grad_norm=0.0))
    held = []
    for p in plain.model.parameters():
        p.register_post_accumulate_grad_hook(lambda _: held.append(sum(q.grad is not None for q in plain.model.parameters())))
    plain.train_step(0)
    assert max(held) == len(params)


def test_non_finite_gradient_leaves_that_parameter_and_flags_the_step(tmp_path):
    trainer = make_trainer(make_cfg(tmp_path, max_grad_norm=0.0, optimizer_in_backward=True))
    poisoned = trainer.model.get_input_embeddings().weight
    poisoned.register_hook(lambda g: torch.full_like(g, float("nan")))
    before = poisoned.detach().clone()
    record = trainer.train_step(0)
    assert record["skipped"] and trainer.skipped_steps == 1 and math.isnan(record["grad_norm"])
    assert torch.equal(poisoned.detach(), before)


def test_hooks_act_only_when_armed():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    stepper = BackwardStepper(opt)
    before = model.weight.detach().clone()
    model(torch.ones(1, 3)).sum().backward()  # not armed: an ordinary backward
    assert torch.equal(model.weight.detach(), before) and model.weight.grad is not None
    model.zero_grad(set_to_none=True)
    stepper.begin()
    model(torch.ones(1, 3)).sum().backward()
    norm = stepper.end()
    assert norm == pytest.approx(math.sqrt(2 * 3 + 2))  # d/dW = ones(2,3), d/db = ones(2)
    torch.testing.assert_close(model.weight.detach(), before - 1.0)


@pytest.mark.parametrize(
    "bad", [{"max_grad_norm": 1.0}, {"max_grad_norm": 0.0, "grad_accum": 2}, {"max_grad_norm": 0.0, "microbatch_tokens": 64}]
)
def test_config_rejects_clipping_and_accumulation(tmp_path, bad):
    with pytest.raises(ConfigError, match="optimizer_in_backward"):
        validate_train_config(make_cfg(tmp_path, optimizer_in_backward=True, **bad))
