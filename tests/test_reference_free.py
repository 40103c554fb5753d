"""SimPO and ORPO: hand-computed values, gradient signs, ORPO's log-odds at the edges, and a
tiny training run that never builds, caches or calls a reference."""

import math

import pytest
import torch

from dpokit import losses as L
from dpokit.config import ConfigError, TrainConfig, load_config, validate_train_config
from dpokit.testing import tiny_model
from dpokit.train.metrics import read_metrics
from dpokit.train.step import pairwise_step, policy_pair_logps
from test_train_loop import make_cfg, make_trainer, tiny_pairs


def softplus(x):  # −log σ(−x)
    return math.log1p(math.exp(x))


# --- SimPO ---------------------------------------------------------------------------------

def test_simpo_hand_values_and_rewards():
    # β = 2, γ = 1:  z = β(ℓc − ℓr) − γ
    #   ℓ = (−1, −2):   2·1 − 1 = 1    → −log σ(1)  = 0.313262
    #   ℓ = (−0.5, −2): 2·1.5 − 1 = 2  → −log σ(2)  = 0.126928
    #   ℓ = (−2, −1):   2·(−1) − 1 = −3 → −log σ(−3) = log(1 + e³) = 3.048587
    lc, lr = torch.tensor([-1.0, -0.5, -2.0]), torch.tensor([-2.0, -2.0, -1.0])
    losses, cr, rr = L.simpo_loss(lc, lr, beta=2.0, gamma=1.0)
    assert losses.tolist() == pytest.approx([0.313262, 0.126928, 3.048587], abs=1e-6)
    assert cr.tolist() == pytest.approx([-2.0, -1.0, -4.0])  # β ℓc
    assert rr.tolist() == pytest.approx([-4.0, -4.0, -2.0])  # β ℓr
    # γ = 0 at equal ℓ: −log σ(0) = ln 2
    same, _, _ = L.simpo_loss(lc, lc.clone(), beta=2.0, gamma=0.0)
    assert same.tolist() == pytest.approx([math.log(2)] * 3)


def test_simpo_gradient_signs():
    # dL/dℓc = −β σ(−z) = −2 σ(−1) = −0.537883 at z = 1; dL/dℓr = +0.537883
    lc = torch.tensor([-1.0], requires_grad=True)
    lr = torch.tensor([-2.0], requires_grad=True)
    losses, cr, _ = L.simpo_loss(lc, lr, beta=2.0, gamma=1.0)
    losses.sum().backward()
    assert lc.grad.item() == pytest.approx(-0.537883, abs=1e-6)
    assert lr.grad.item() == pytest.approx(0.537883, abs=1e-6)
    assert not cr.requires_grad
    # and by value: a better chosen / a worse rejected lowers the loss
    base = L.simpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), beta=2.0, gamma=1.0)[0]
    assert L.simpo_loss(torch.tensor([-0.9]), torch.tensor([-2.0]), beta=2.0, gamma=1.0)[0] < base
    assert L.simpo_loss(torch.tensor([-1.0]), torch.tensor([-2.1]), beta=2.0, gamma=1.0)[0] < base


# --- ORPO ----------------------------------------------------------------------------------

# ℓ = ln p with p = 3/4, 1/2, 1/3  →  odds p/(1−p) = 3, 1, 1/2  →  log odds = ln 3, 0, −ln 2
L34, L12, L13 = math.log(3 / 4), math.log(1 / 2), math.log(1 / 3)


def test_orpo_log_odds_hand_values():
    got = L.log_odds(torch.tensor([L34, L12, L13]))
    assert got.tolist() == pytest.approx([math.log(3), 0.0, -math.log(2)], abs=1e-6)


def test_orpo_hand_values_and_rewards():
    # λ = 0.1, L = −ℓc − λ log σ(log odds_c − log odds_r):
    #   (3/4, 1/2): ln(4/3) + 0.1·(−log σ(ln 3) = ln(4/3))  = 0.287682 + 0.028768 = 0.316450
    #   (1/2, 1/3): ln 2   + 0.1·(−log σ(ln 2) = ln(3/2))  = 0.693147 + 0.040547 = 0.733694
    #   (1/3, 3/4): ln 3   + 0.1·(−log σ(−ln 6) = ln 7)    = 1.098612 + 0.194591 = 1.293203
    lc, lr = torch.tensor([L34, L12, L13]), torch.tensor([L12, L13, L34])
    losses, cr, rr = L.orpo_loss(lc, lr, beta=0.5, lam=0.1)
    assert losses.tolist() == pytest.approx([0.316450, 0.733694, 1.293203], abs=1e-5)
    assert cr.tolist() == pytest.approx((0.5 * lc).tolist())  # β ℓ, documented choice
    assert rr.tolist() == pytest.approx((0.5 * lr).tolist())
    # λ = 0 is the per-token NLL of the chosen completion (SFT)
    sft, _, _ = L.orpo_loss(lc, lr, beta=0.5, lam=0.0)
    assert torch.allclose(sft, L.nll_loss(lc * 4, torch.full((3,), 4)))


def test_orpo_gradient_signs():
    # At ℓc = ln(3/4), ℓr = ln(1/2): σ(−ln 3) = 1/4, d log odds/dℓ = 1/(1 − e^ℓ) = 4 and 2, so
    #   dL/dℓc = −1 − λ·(1/4)·4 = −1.1,   dL/dℓr = +λ·(1/4)·2 = +0.05
    lc = torch.tensor([L34], requires_grad=True)
    lr = torch.tensor([L12], requires_grad=True)
    losses, cr, _ = L.orpo_loss(lc, lr, beta=0.1, lam=0.1)
    losses.sum().backward()
    assert lc.grad.item() == pytest.approx(-1.1, abs=1e-5)
    assert lr.grad.item() == pytest.approx(0.05, abs=1e-6)
    assert not cr.requires_grad
    base = L.orpo_loss(torch.tensor([L34]), torch.tensor([L12]), beta=0.1, lam=0.1)[0]
    assert L.orpo_loss(torch.tensor([L34 + 0.05]), torch.tensor([L12]), beta=0.1, lam=0.1)[0] < base
    assert L.orpo_loss(torch.tensor([L34]), torch.tensor([L12 - 0.05]), beta=0.1, lam=0.1)[0] < base


def test_log1mexp_accurate_across_the_range():
    xs = [-1e-6, -1e-3, -0.5, -math.log(2), -1.0, -10.0, -50.0]
    # float64 reference; each form where it has digits to spare (−50: log1p(−e⁻⁵⁰) = −1.9287e-22)
    want = [math.log(-math.expm1(x)) if x > -1 else math.log1p(-math.exp(x)) for x in xs]
    got = L.log1mexp(torch.tensor(xs)).tolist()
    assert got == pytest.approx(want, rel=1e-5, abs=0)
    # the naive form is off by > 1% at −1e-6 in fp32; log1mexp is not
    naive = torch.log1p(-torch.exp(torch.tensor(-1e-6)))
    assert abs(naive.item() - math.log(1e-6)) > 1e-2
    assert L.log1mexp(torch.tensor(-1e-6)).item() == pytest.approx(math.log(1e-6), rel=1e-6)


@pytest.mark.parametrize("ell", [-1e-6, -50.0, 0.0, -1e-30])
def test_orpo_finite_values_and_gradients_at_the_edges(ell):
    # ℓ → 0: odds → ∞ (ℓ = 0 exactly happens when every token is predicted with p = 1 in fp32);
    # ℓ = −50: 1 − e^ℓ rounds to 1. Both as chosen and as rejected, against an ordinary ℓ.
    for lc_val, lr_val in ((ell, -2.0), (-2.0, ell), (ell, ell)):
        lc = torch.tensor([lc_val], requires_grad=True)
        lr = torch.tensor([lr_val], requires_grad=True)
        losses, cr, rr = L.orpo_loss(lc, lr, beta=0.1, lam=0.25)
        losses.sum().backward()
        for t in (losses, cr, rr, lc.grad, lr.grad):
            assert torch.isfinite(t).all(), (lc_val, lr_val, t)
    odds = L.log_odds(torch.tensor([-1e-6, -50.0]))
    want = [x - math.log(-math.expm1(x)) for x in (-1e-6, -50.0)]  # ≈ 13.8155, −50
    assert odds.tolist() == pytest.approx(want, rel=1e-5)


# --- registry and config -------------------------------------------------------------------

def test_registry_flags_reference_free_losses():
    assert L.get_loss("simpo").fn is L.simpo_loss and L.get_loss("orpo").fn is L.orpo_loss
    for name in ("simpo", "orpo"):
        spec = L.get_loss(name)
        assert spec.reference_free and spec.average_logps
    assert not any(L.get_loss(n).reference_free for n in ("dpo", "cdpo", "robust", "ipo", "hinge", "soft"))
    with pytest.raises(ValueError, match="valid: .*orpo.*simpo"):
        L.get_loss("simpoo")


def test_config_keys_and_validation():
    cfg = load_config(TrainConfig, None, ["loss=simpo", "simpo_gamma=1.0", "beta=2"])
    assert (cfg.loss, cfg.simpo_gamma, cfg.orpo_lambda) == ("simpo", 1.0, 0.1)
    with pytest.raises(ConfigError, match="orpo_lambda must be ≥ 0"):
        load_config(TrainConfig, None, ["loss=orpo", "orpo_lambda=-0.1"])
    with pytest.raises(ConfigError, match="simpo_gamma must be finite"):
        load_config(TrainConfig, None, ["loss=simpo", "simpo_gamma=.inf"])
    with pytest.raises(ConfigError, match="orpo_lambda"):
        validate_train_config(TrainConfig(orpo_lambda=float("nan")))
    with pytest.raises(ConfigError, match="loss=orpo needs per-token mean"):
        load_config(TrainConfig, None, ["loss=orpo", "average_logps=false"])


# --- wiring: the step and the trainer ------------------------------------------------------

class ExplodingReference:
    """Any use of the reference fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"reference.{name} used by a reference-free loss")


@pytest.mark.parametrize("loss", ["simpo", "orpo"])
def test_step_uses_per_token_means_and_no_reference(tmp_path, loss):
    cfg = make_cfg(tmp_path, loss=loss, beta=2.0, simpo_gamma=1.0, orpo_lambda=0.2)
    model, items = tiny_model(seed=1), tiny_pairs(4)
    losses, sums = pairwise_step(model, ExplodingReference(), items, 0, cfg)
    with torch.no_grad():
        pc, pr, nc, nr = policy_pair_logps(model, items, 0, cfg)
    fn, kw = (L.simpo_loss, {"gamma": 1.0}) if loss == "simpo" else (L.orpo_loss, {"lam": 0.2})
    want, cr, _ = fn(pc / nc, pr / nr, beta=2.0, **kw)
    assert torch.allclose(losses.detach(), want, atol=1e-6)
    means = sums.means()
    assert means["rewards/chosen"] == pytest.approx(cr.mean().item(), abs=1e-5)  # β · mean ℓc
    assert means["logps/chosen"] == pytest.approx(pc.mean().item(), abs=1e-4)  # summed, as for DPO
    assert losses.requires_grad
    # None works too; a reference loss without a reference says so
    pairwise_step(model, None, items, 0, cfg)
    with pytest.raises(ValueError, match="needs a reference"):
        pairwise_step(model, None, items, 0, make_cfg(tmp_path, loss="dpo"))


@pytest.mark.parametrize("reference", ["cached", "copy"])
@pytest.mark.parametrize("loss", ["simpo", "orpo"])
def test_trainer_builds_no_reference(tmp_path, monkeypatch, loss, reference):
    from dpokit import reference as ref

    def forbidden(*a, **k):
        raise AssertionError("a reference was built for a reference-free loss")

    for name in ("precompute_reference", "FrozenCopyReference", "AdapterDisabledReference"):
        monkeypatch.setattr(ref, name, forbidden)
    trainer = make_trainer(make_cfg(tmp_path, loss=loss, reference=reference, max_steps=1))
    assert trainer.ref_train is None and trainer.ref_eval is None
    assert not any(isinstance(v, ref.ReferenceBackend) for v in vars(trainer).values())
    record = trainer.train_step(0)
    assert math.isfinite(record["loss"]) and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("loss,extra", [("simpo", {"beta": 2.0, "simpo_gamma": 0.5}), ("orpo", {"orpo_lambda": 0.5, "beta": 1.0})])
def test_reference_free_training_learns_the_preference(tmp_path, loss, extra):
    # tiny_pairs: chosen tokens from [0, 128), rejected from [128, 256): learnable in a few steps.
    cfg = make_cfg(tmp_path, loss=loss, max_steps=10, lr=3e-3, schedule="constant", warmup_steps=0, **extra)
    trainer = make_trainer(cfg)
    result = trainer.fit()
    records = read_metrics(trainer.run_dir / "metrics.jsonl")
    train = [r for r in records if r["split"] == "train"]
    assert len(train) == 10
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"):
        assert key in train[0] and math.isfinite(train[-1][key]), key
    # Each step sees other pairs, so compare the first three steps with the last three.
    def mean(key, part):
        return sum(r[key] for r in part) / len(part)

    first, last = train[:3], train[-3:]
    assert mean("loss", last) < mean("loss", first) - 0.2
    assert mean("rewards/margins", last) > mean("rewards/margins", first) + 0.4  # a sign error lowers it
    assert mean("rewards/accuracies", last) >= 0.75
    if loss == "orpo":  # its NLL term raises the chosen likelihood itself
        assert mean("rewards/chosen", last) > mean("rewards/chosen", first) + 0.3
    assert math.isfinite(result.summary["eval"]["rewards/margins"])
    assert result.summary["skipped_steps"] == 0
    assert not (tmp_path / "cache").exists()  # no reference cache was ever written
