"""Low-rank probes' pure parts: layer groups for any depth, the LoRA each probe gets, its
parameter count, the share of gain with Fieller's interval, the verdict, the shift headline;
and a planted shift the headline must place in the right group."""

import copy
import math

import pytest
import torch

from dpokit.shift.probe import (
    PLACE_GROUPS,
    adapted_modules,
    group_layers,
    layer_linears,
    lora_param_count,
    probe_specs,
    third,
)
from dpokit.shift.probe_stats import (
    per_prompt_means,
    share_of_gain,
    shift_headline,
    verdict,
)

ATTN = ["self_attn.k_proj", "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj"]
MLP = ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj"]


# -- groups ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, bottom, top", [
    (30, list(range(10)), list(range(20, 30))),  # SmolLM2-135M
    (2, [0], [1]), (3, [0], [2]), (4, [0], [3]), (5, [0, 1], [3, 4]), (6, [0, 1], [4, 5]), (7, [0, 1], [5, 6]),
    (8, [0, 1, 2], [5, 6, 7]),
])
def test_thirds_by_hand(n, bottom, top):
    assert group_layers("bottom_third", n) == bottom and group_layers("top_third", n) == top
    assert group_layers("attention", n) == group_layers("mlp", n) == group_layers("all", n) == list(range(n))


def test_thirds_are_the_nearest_integer_and_disjoint_at_every_depth():
    for n in range(2, 200):
        k = third(n)
        assert abs(k - n / 3) <= 0.5 and k >= 1
        assert not set(group_layers("bottom_third", n)) & set(group_layers("top_third", n))
    with pytest.raises(ValueError, match="at least 2 decoder layers"):
        third(1)
    with pytest.raises(ValueError, match="unknown layer group 'middle'"):
        group_layers("middle", 6)


def test_probe_specs_on_a_tiny_llama():
    from dpokit.testing import tiny_model

    model = tiny_model(layers=6)
    linears = layer_linears(model)
    assert sorted(linears) == sorted(ATTN + MLP)
    assert (linears["mlp.down_proj"]["d_in"], linears["mlp.down_proj"]["d_out"]) == (128, 64)
    assert (linears["self_attn.k_proj"]["d_in"], linears["self_attn.k_proj"]["d_out"]) == (64, 32)  # 2 KV heads
    specs = {s.name: s for s in probe_specs(model, [1, 2], 1, list(PLACE_GROUPS))}
    assert list(specs) == ["lora-r1", "lora-r2", "lora-attention-r1", "lora-mlp-r1", "lora-bottom-third-r1",
                           "lora-top-third-r1"]  # lora-r1 is the rank sweep's: not repeated
    assert list(specs["lora-attention-r1"].target_modules) == ATTN and list(specs["lora-mlp-r1"].target_modules) == MLP
    assert specs["lora-top-third-r1"].layers == (4, 5) and specs["lora-top-third-r1"].lora_layers == [4, 5]
    assert specs["lora-r2"].lora_layers == [] and sorted(specs["lora-r2"].target_modules) == sorted(ATTN + MLP)
    # by hand: per layer Σ(d_in + d_out) = q 128 + k 96 + v 96 + o 128 + gate 192 + up 192 + down 192 = 1024
    assert lora_param_count(model, specs["lora-r2"]) == 2 * 1024 * 6
    assert lora_param_count(model, specs["lora-top-third-r1"]) == 1024 * 2
    assert lora_param_count(model, specs["lora-attention-r1"]) == (128 + 96 + 96 + 128) * 6


def test_each_probe_gets_exactly_its_lora_and_peft_agrees_on_the_count():
    from dpokit.config import LoraConfig
    from dpokit.models import apply_lora
    from dpokit.testing import tiny_model

    model = tiny_model(layers=6)
    counts = {}
    for spec in probe_specs(model, [1, 2, 4], 1, list(PLACE_GROUPS)):
        lora = LoraConfig(r=spec.r, alpha=2 * spec.r, target_modules=list(spec.target_modules), layers=spec.lora_layers)
        peft_model = apply_lora(copy.deepcopy(model), lora)
        assert adapted_modules(peft_model) == {layer: set(spec.target_modules) for layer in spec.layers}, spec.name
        assert peft_model.get_nb_trainable_parameters()[0] == lora_param_count(model, spec), spec.name
        assert layer_linears(peft_model) == layer_linears(model)  # a wrapped map counts once, as itself
        counts[spec.name] = lora_param_count(model, spec)
    assert counts["lora-r1"] < counts["lora-r2"] < counts["lora-r4"]
    # a trained map is one whose B moved: zero B is "adapter present, never trained"
    peft_model = apply_lora(copy.deepcopy(model), LoraConfig(r=1, target_modules=MLP, layers=[5]))
    assert adapted_modules(peft_model, trained_only=True) == {}
    with torch.no_grad():
        peft_model.base_model.model.model.layers[5].mlp.up_proj.lora_B["default"].weight.fill_(0.1)
    assert adapted_modules(peft_model, trained_only=True) == {5: {"mlp.up_proj"}}


# -- share of gain ---------------------------------------------------------------------------------
def test_share_of_gain_by_hand():
    """a = probe − ref = [0, 1, 0, 1], b = full − ref = [1, 1, 1, 1]: ā = 0.5, b̄ = 1, v_bb = v_ab = 0,
    v_aa = (1/3)/4 = 1/12, t_{0.975,3} = 3.1824, so the interval is 0.5 ± 3.1824·√(1/12)."""
    out = share_of_gain([0, 0, 0, 0], [0, 1, 0, 1], [1, 1, 1, 1])
    half = 3.1824 * math.sqrt(1 / 12)
    assert out["share"] == pytest.approx(0.5) and out["ci95"] == pytest.approx([0.5 - half, 0.5 + half])
    assert (out["probe_gain"], out["full_gain"], out["n"], out["note"]) == (0.5, 1.0, 4, None)
    # a probe that moves exactly half of the full gain on every prompt: the interval closes on 1/2
    ref, full = [0.1, 0.3, -0.2, 0.0, 0.5], [0.5, 0.9, 0.6, 0.2, 0.9]
    half_way = [r + (f - r) / 2 for r, f in zip(ref, full)]
    out = share_of_gain(ref, half_way, full)
    assert out["share"] == pytest.approx(0.5) and out["ci95"] == pytest.approx([0.5, 0.5], abs=1e-6)


def test_fieller_interval_by_hand_with_a_noisy_denominator():
    """a = [1, 2, 3], b = [2, 2, 5]: ā = 2, b̄ = 3, v_aa = 1/3, v_bb = 1, v_ab = 1/2, t_{0.975,2} = 4.3027.
    A = 9 − t², B = −2(6 − t²/2), C = 4 − t²/3, roots (−B ± √(B² − 4AC)) / 2A."""
    t2 = 4.3027 ** 2
    big_a, big_b, big_c = 9 - t2, -2 * (6 - t2 / 2), 4 - t2 / 3
    assert big_a < 0  # the full gain is not significant at n = 3: no share
    out = share_of_gain([0, 0, 0], [1, 2, 3], [2, 2, 5])
    assert out["share"] is None and out["ci95"] is None and "not significantly different from 0" in out["note"]
    assert out["full_gain_ci95"] == pytest.approx([3 - 4.3027, 3 + 4.3027])
    # with 4 copies of each prompt (n = 12) the same means are significant: v's quarter... recomputed by hand
    a, b = [1, 2, 3] * 4, [2, 2, 5] * 4
    n, t2 = 12, 2.2010 ** 2
    v_aa, v_bb, v_ab = (8 / 11) / n, (24 / 11) / n, (12 / 11) / n  # Σ(a−ā)² = 8, Σ(b−b̄)² = 24, Σ(a−ā)(b−b̄) = 12
    big_a, big_b, big_c = 9 - t2 * v_bb, -2 * (6 - t2 * v_ab), 4 - t2 * v_aa
    root = math.sqrt(big_b ** 2 - 4 * big_a * big_c)
    out = share_of_gain([0] * n, a, b)
    assert out["share"] == pytest.approx(2 / 3)
    assert out["ci95"] == pytest.approx([(-big_b - root) / (2 * big_a), (-big_b + root) / (2 * big_a)])


def test_no_share_of_a_loss_and_bad_input():
    out = share_of_gain([1.0] * 5, [0.9, 1.0, 0.8, 0.9, 1.0], [0.0, 0.1, 0.0, -0.1, 0.0])
    assert out["share"] is None and out["note"] == "the full fine-tune lowered the reward: no share"
    with pytest.raises(ValueError, match="equal lengths"):
        share_of_gain([0, 0], [1, 1], [1])
    assert per_prompt_means([[1.0, 0.0], [0.5, 0.5, 0.2]]) == pytest.approx([0.5, 0.4])
    with pytest.raises(ValueError, match="no scored samples"):
        per_prompt_means([[1.0], []])


# -- verdict ---------------------------------------------------------------------------------------
def _p(name, group, r, share, lo, hi):
    return {"name": name, "group": group, "r": r, "share": share, "ci95": [lo, hi]}


SWEEP = [_p("lora-r1", "all", 1, 0.85, 0.7, 1.0), _p("lora-r4", "all", 4, 0.95, 0.85, 1.05)]


def test_verdict_localised_lowrank_spread_undetermined():
    groups = [_p("lora-attention-r1", "attention", 1, 0.3, 0.1, 0.5), _p("lora-mlp-r1", "mlp", 1, 0.85, 0.6, 1.1),
              _p("lora-top-third-r1", "top_third", 1, 0.9, 0.82, 1.0)]
    v = verdict(SWEEP + groups, group_r=1, min_r=1)
    assert (v["label"], v["firm"], v["deciding"]) == ("localised", True, ["lora-top-third-r1"])  # the best group decides
    assert v["smallest_rank_reaching"] == 1 and "≥ 80%" in v["rule"]
    low = [_p("lora-attention-r1", "attention", 1, 0.3, 0.1, 0.5), _p("lora-mlp-r1", "mlp", 1, 0.7, 0.55, 0.79)]
    v = verdict(SWEEP + low, group_r=1, min_r=1)
    assert (v["label"], v["firm"]) == ("low-rank", False)  # r = 1 everywhere reaches, but its CI dips below 0.8
    v = verdict([_p("lora-r1", "all", 1, 0.5, 0.3, 0.7), SWEEP[1]] + low, group_r=1, min_r=1)
    assert (v["label"], v["firm"], v["smallest_rank_reaching"]) == ("spread", True, 4)
    assert set(v["deciding"]) == {"lora-attention-r1", "lora-mlp-r1", "lora-r1"}
    v = verdict([_p("lora-r1", "all", 1, None, None, None)] + low, group_r=1, min_r=1)
    assert v["label"] == "undetermined" and not v["firm"]
    # the threshold is a setting: at 0.95 nothing is localised
    assert verdict(SWEEP + groups, group_r=1, min_r=1, threshold=0.95)["label"] == "spread"


def test_verdict_counts_only_probes_within_the_full_fine_tunes_kl():
    # full KL 2.0 -> budget 2.2 nats (10% slack): reward bought with more KL does not count
    kl = lambda p, k: {**p, "kl": k}
    top = _p("lora-top-third-r1", "top_third", 1, 1.2, 0.85, 1.9)
    att = _p("lora-attention-r1", "attention", 1, 1.8, 1.3, 2.9)
    sweep = [kl(_p("lora-r1", "all", 1, 2.1, 1.5, 3.5), 6.5), kl(_p("lora-r4", "all", 4, 0.9, 0.85, 1.0), 2.1)]
    v = verdict(sweep + [kl(att, 3.7), kl(top, 1.4)], group_r=1, min_r=1, full_kl=2.0)
    assert v["kl_budget"] == pytest.approx(2.2) and v["over_budget"] == ["lora-r1", "lora-attention-r1"]
    assert (v["label"], v["firm"], v["deciding"]) == ("localised", True, ["lora-top-third-r1"])  # not attention
    assert v["smallest_rank_reaching"] == 4 and "2.2 nats" in v["rule"]  # r = 1 is over budget
    v = verdict(sweep + [kl(att, 3.7), kl(top, 2.5)], group_r=1, min_r=1, full_kl=2.0)
    assert v["label"] == "spread" and set(v["over_budget"]) == {"lora-r1", "lora-attention-r1", "lora-top-third-r1"}
    # without a budget (or without the probes' KL) the rule is the reward-only one
    assert verdict(sweep + [kl(att, 3.7), kl(top, 2.5)], group_r=1, min_r=1)["deciding"] == ["lora-attention-r1"]


# -- the headline of a shift report, and a planted shift it must place -------------------------------
def _planted(layers: int = 6, layer: int = 5, module: str = "down_proj", scale: float = 20.0):
    from dpokit.testing import tiny_model

    ref = tiny_model(layers=layers)
    policy = copy.deepcopy(ref)
    g = torch.Generator().manual_seed(3)
    mlp = policy.model.layers[layer].mlp
    w = getattr(mlp, module).weight
    with torch.no_grad():
        w += scale * torch.outer(torch.randn(w.shape[0], generator=g), torch.randn(w.shape[1], generator=g)) * w.std()
    return ref, policy


def test_the_headline_finds_a_planted_top_third_mlp_change():
    from dpokit.shift import inspect_shift
    from dpokit.testing import tiny_tokenizer

    ref, policy = _planted()
    prompts = ["I watched this film about a retired detective and", "So I finally saw it. Honestly,"]
    report = inspect_shift(policy, ref, tiny_tokenizer(), prompts, [" it was great.", " not bad at all."], max_length=64)
    h = shift_headline(report, 6)
    assert h["energy_by_type"]["mlp"] == pytest.approx(1.0) and h["energy_by_third"]["top_third"] == pytest.approx(1.0)
    assert h["effective_rank"] == {"mlp": {"median": 1, "max": 1, "median_of_full": 1 / 64, "maps": 1}}
    assert h["patching_by_third"]["bottom_third"] == pytest.approx(0.0, abs=1e-6)
    assert h["patching_by_third"]["middle"] == pytest.approx(0.0, abs=1e-6)
    assert h["patching_by_third"]["top_third"] == pytest.approx(1.0, abs=1e-3)
    assert h["patching_top_layers"][0] == 5 and h["patching_half_layer"] == 5 and h["largest_shift_layer"] == 5


def test_headline_by_hand_on_a_report_dict():
    """Energies 9 (layer 0 q), 3 (layer 5 down), 4 (embedding), 0 (norm) of 16; patching
    fractions 0.1, 0.1, 0.2, 0.2, 0.6, 1.0 over 6 layers (thirds: 0-1, 2-3, 4-5)."""
    rows = [
        {"layer": 0, "type": "q", "delta_norm": 3.0, "effective_rank": 2, "shape": [64, 64]},
        {"layer": 5, "type": "down", "delta_norm": math.sqrt(3), "effective_rank": 4, "shape": [64, 128]},
        {"layer": None, "type": "embed", "delta_norm": 2.0, "effective_rank": 5, "shape": [260, 64]},
        {"layer": 3, "type": "norm", "delta_norm": 0.0, "effective_rank": None, "shape": [64]},
    ]
    fractions = [0.1, 0.1, 0.2, 0.2, 0.6, 1.0]
    report = {"weights": rows, "patching": {"layers": [{"layer": i, "fraction": f} for i, f in enumerate(fractions)]},
              "summary": {"top10pct_energy_share": 0.5625, "largest_shift_layer": 4, "top1_dominant_layers": [4],
                          "patching_half_layer": 4}}
    h = shift_headline(report, 6)
    assert h["energy_by_type"] == pytest.approx({"attention": 9 / 16, "mlp": 3 / 16, "embedding": 4 / 16, "norm": 0, "other": 0})
    assert h["energy_by_third"] == pytest.approx({"bottom_third": 9 / 16, "middle": 0, "top_third": 3 / 16, "outside": 4 / 16})
    assert h["effective_rank"] == {"attention": {"median": 2, "max": 2, "median_of_full": 2 / 64, "maps": 1},
                                   "mlp": {"median": 4, "max": 4, "median_of_full": 4 / 64, "maps": 1}}
    assert h["patching_by_third"] == pytest.approx({"bottom_third": 0.1, "middle": 0.1, "top_third": 0.8})
    assert h["patching_top_layers"] == [5, 4, 0]
    report["patching"]["layers"][2]["fraction"] = None  # no gap to move: no per-third split
    assert shift_headline(report, 6)["patching_by_third"] is None
