"""dpokit.shift.weights: effective rank by hand, name parsing, a planted one-matrix change,
tied embeddings and LoRA policies (merged copies, reference = base)."""

import copy

import pytest
import torch

from dpokit.shift.weights import (
    by_layer_and_type,
    effective_rank,
    layer_index,
    module_type,
    weight_changes,
)
from dpokit.testing import tiny_model

PLANTED = "model.layers.1.mlp.down_proj.weight"


# ---- effective_rank by hand -------------------------------------------------------------

def test_effective_rank_diagonal():
    d = torch.diag(torch.tensor([3.0, 2.0, 1.0]))  # energies 9, 4, 1 of 14
    assert effective_rank(d) == 2  # 90% = 12.6: 9 < 12.6 <= 13
    assert effective_rank(d, energy=0.6) == 1  # 8.4 <= 9
    assert effective_rank(d, energy=1.0) == 3
    assert effective_rank(d, energy=0.95) == 3  # 13.3 > 13


def test_effective_rank_threshold_met_exactly():
    # A threshold equal to a cumulative energy is met at that k, not the next one.
    d = torch.diag(torch.tensor([3.0, 2.0, 1.0]))
    assert effective_rank(d, energy=9 / 14) == 1
    assert effective_rank(d, energy=13 / 14) == 2
    assert effective_rank(torch.eye(2), energy=0.5) == 1
    assert effective_rank(torch.eye(4), energy=0.5) == 2


def test_effective_rank_rank_one_zero_and_shape():
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(7, 1, generator=g), torch.randn(1, 5, generator=g)
    assert effective_rank(u @ v) == 1
    assert effective_rank(u @ v, energy=1.0) == 1  # float round-off must not add a 2nd value
    assert effective_rank(torch.zeros(4, 3)) == 0
    assert effective_rank(torch.randn(6, 6, generator=g), energy=1.0) == 6
    with pytest.raises(ValueError):
        effective_rank(torch.eye(3), energy=0.0)
    with pytest.raises(ValueError):
        effective_rank(torch.ones(3))


# ---- names ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "name, layer, kind",
    [
        ("model.layers.3.self_attn.q_proj.weight", 3, "q"),
        ("model.layers.0.self_attn.k_proj.weight", 0, "k"),
        ("model.layers.12.self_attn.v_proj.weight", 12, "v"),
        ("model.layers.1.self_attn.o_proj.weight", 1, "o"),
        ("model.layers.1.mlp.gate_proj.weight", 1, "gate"),
        ("model.layers.1.mlp.up_proj.weight", 1, "up"),
        ("model.layers.10.mlp.down_proj.weight", 10, "down"),
        ("model.layers.2.input_layernorm.weight", 2, "norm"),
        ("model.layers.2.post_attention_layernorm.weight", 2, "norm"),
        ("model.embed_tokens.weight", None, "embed"),
        ("lm_head.weight", None, "head"),
        ("model.norm.weight", None, "norm"),
        ("transformer.h.5.attn.c_attn.weight", 5, "qkv"),
        ("transformer.h.5.attn.c_proj.weight", 5, "o"),
        ("transformer.h.5.mlp.c_proj.weight", 5, "down"),
        ("transformer.h.5.mlp.c_fc.bias", 5, "up"),
        ("transformer.ln_f.weight", None, "norm"),
        ("transformer.wte.weight", None, "embed"),
        ("model.layers.0.mystery.weight", 0, "other"),
    ],
)
def test_name_parsing(name, layer, kind):
    assert layer_index(name) == layer
    assert module_type(name) == kind


# ---- a planted one-matrix change --------------------------------------------------------

def _planted(scale=0.02, seed=1):
    ref = tiny_model(layers=3)
    policy = copy.deepcopy(ref)
    w = policy.get_submodule(PLANTED.removesuffix(".weight")).weight
    g = torch.Generator().manual_seed(seed)
    u, v = torch.randn(w.shape[0], 1, generator=g), torch.randn(1, w.shape[1], generator=g)
    with torch.no_grad():
        w += scale * (u @ v)
    return policy, ref, scale * (u @ v)


def test_planted_matrix_ranked_first_rank_one_others_exactly_zero():
    policy, ref, delta = _planted()
    rows = weight_changes(policy, ref)
    first = rows[0]
    assert first["name"] == PLANTED and first["layer"] == 1 and first["type"] == "down"
    assert first["effective_rank"] == 1
    w_ref = ref.get_submodule(PLANTED.removesuffix(".weight")).weight.detach()
    assert first["delta_norm"] == pytest.approx(float(delta.norm()), rel=1e-5)
    assert first["relative_change"] == pytest.approx(float(delta.norm() / w_ref.norm()), rel=1e-5)
    for row in rows[1:]:
        assert row["delta_norm"] == 0.0 and row["relative_change"] == 0.0, row["name"]
        assert row["effective_rank"] in (0, None)
    # every parameter tensor of the model is reported, the tied head once (as the embedding)
    assert len(rows) == len(list(ref.parameters()))
    names = [r["name"] for r in rows]
    assert "lm_head.weight" not in names and len(set(names)) == len(names)
    embed = next(r for r in rows if r["name"] == "model.embed_tokens.weight")
    assert embed["tied"] is True and embed["type"] == "embed" and embed["layer"] is None


def test_by_layer_and_type_aggregates():
    policy, ref, _ = _planted()
    rows = weight_changes(policy, ref)
    groups = {(g["layer"], g["type"]): g for g in by_layer_and_type(rows)}
    assert groups[(1, "down")]["max_effective_rank"] == 1
    assert groups[(1, "down")]["mean_relative_change"] == pytest.approx(rows[0]["relative_change"])
    assert groups[(1, "norm")]["count"] == 2 and groups[(1, "norm")]["max_effective_rank"] is None
    assert groups[(None, "norm")]["count"] == 1
    changed = [k for k, g in groups.items() if g["delta_sq"] > 0]
    assert changed == [(1, "down")]
    # mean over a group: two changed q matrices of different sizes of change
    policy2 = copy.deepcopy(ref)
    with torch.no_grad():
        for i, s in ((0, 0.1), (2, 0.3)):
            q = policy2.model.layers[i].self_attn.q_proj.weight
            q += s * q  # relative change exactly s
    rows2 = weight_changes(policy2, ref)
    groups2 = {(g["layer"], g["type"]): g for g in by_layer_and_type(rows2)}
    assert groups2[(0, "q")]["mean_relative_change"] == pytest.approx(0.1, rel=1e-5)
    assert groups2[(2, "q")]["max_effective_rank"] > 1  # a full-rank change


def test_untied_model_reports_head_separately():
    ref = tiny_model(layers=1)
    ref.config.tie_word_embeddings = False
    ref.lm_head.weight = torch.nn.Parameter(ref.lm_head.weight.detach().clone())
    policy = copy.deepcopy(ref)
    with torch.no_grad():
        policy.lm_head.weight[5] += 1.0
    rows = weight_changes(policy, ref)
    assert rows[0]["name"] == "lm_head.weight" and rows[0]["type"] == "head"
    assert rows[0]["effective_rank"] == 1 and not rows[0]["tied"]
    assert next(r for r in rows if r["type"] == "embed")["delta_norm"] == 0.0


def test_mismatched_models_refused():
    with pytest.raises(ValueError, match="different parameters"):
        weight_changes(tiny_model(layers=2), tiny_model(layers=3))


# ---- LoRA policies ----------------------------------------------------------------------

def lora_policy(base, r=4, seed=3):
    """A peft LoRA wrap of a copy of `base` on q/v with random (non-zero) B matrices."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    policy = get_peft_model(copy.deepcopy(base), config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return policy.eval()


def _lora_delta(policy, layer, proj):
    module = getattr(policy.get_base_model().model.layers[layer].self_attn, proj)
    return module.scaling["default"] * module.lora_B["default"].weight @ module.lora_A["default"].weight


def test_lora_policy_merged_against_base():
    base = tiny_model(layers=2)
    policy = lora_policy(base)
    before = {n: p.clone() for n, p in policy.named_parameters()}
    rows = {r["name"]: r for r in weight_changes(policy, base)}
    assert not any("lora" in n or "base_layer" in n for n in rows)
    assert len(rows) == len(list(base.parameters()))
    for layer in range(2):
        for proj in ("q_proj", "v_proj"):
            row = rows[f"model.layers.{layer}.self_attn.{proj}.weight"]
            delta = _lora_delta(policy, layer, proj)
            assert row["delta_norm"] == pytest.approx(float(delta.norm()), rel=1e-5)
            assert 1 <= row["effective_rank"] <= 4
    changed = {n for n, r in rows.items() if r["delta_norm"] > 0}
    assert changed == {f"model.layers.{i}.self_attn.{p}.weight" for i in range(2) for p in ("q_proj", "v_proj")}
    # the caller's policy is not merged in place
    after = dict(policy.named_parameters())
    assert set(after) == set(before) and all(torch.equal(after[n], before[n]) for n in before)


def test_lora_reference_none_or_own_base_is_the_base():
    base = tiny_model(layers=2)
    policy = lora_policy(base)
    expected = weight_changes(policy, base)
    for ref in (None, policy, policy.get_base_model()):
        got = weight_changes(policy, ref)
        assert [(r["name"], r["delta_norm"]) for r in got] == [(r["name"], r["delta_norm"]) for r in expected]
    with pytest.raises(ValueError, match="peft"):
        weight_changes(base, None)
