"""dpokit.shift activations and report: planted shifts the tools must locate (one changed
matrix, one planted direction), padding, hook output forms, LoRA policies, the JSON report."""

import copy
import json

import pytest
import torch

from dpokit.shift import (
    activation_patching,
    format_report,
    inspect_shift,
    logit_lens_of_shift,
    residual_shift,
)
from dpokit.shift.activations import _replace_hidden, layer_outputs
from dpokit.shift.report import encode, summarize, top_energy_share
from dpokit.testing import tiny_model, tiny_tokenizer

PROMPTS = ["hello there", "a longer prompt about cats and dogs", "x", "what is 2+2?"]
COMPLETIONS = ["hi!", "they are pets", "y", "four"]
PLANTED_LAYER = 2  # of 4


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def batch(tok):
    return encode(tok, PROMPTS, COMPLETIONS)


@pytest.fixture(scope="module")
def prompts_only(tok):
    return encode(tok, PROMPTS)


def _rank_one(w, scale, seed=1):
    g = torch.Generator().manual_seed(seed)
    u, v = torch.randn(w.shape[0], 1, generator=g), torch.randn(1, w.shape[1], generator=g)
    with torch.no_grad():
        w += scale * (u @ v)
    return u[:, 0]


@pytest.fixture(scope="module")
def planted():
    """A 4-layer reference and a policy differing only by u vᵀ in layer 2's down_proj."""
    ref = tiny_model(layers=4)
    policy = copy.deepcopy(ref)
    u = _rank_one(policy.model.layers[PLANTED_LAYER].mlp.down_proj.weight, 0.01)
    return policy, ref, u


def test_layer_outputs_are_the_residual_stream(prompts_only):
    model = tiny_model(layers=3)
    ids, mask = prompts_only["input_ids"], prompts_only["attention_mask"]
    outs = layer_outputs(model, ids, mask)
    with torch.no_grad():
        hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        assert len(outs) == 3
        for i in range(2):
            assert torch.equal(outs[i], hs[i + 1])
        # transformers' last hidden state has the final norm applied; ours is the raw stream
        assert torch.allclose(model.model.norm(outs[2]), hs[3], atol=1e-6)


def test_planted_residual_shift_starts_at_the_changed_layer(planted, prompts_only):
    policy, ref, u = planted
    rows = residual_shift(policy, ref, prompts_only["input_ids"], prompts_only["attention_mask"])
    assert [r["layer"] for r in rows] == [0, 1, 2, 3]
    assert rows[0]["tokens"] == int(prompts_only["attention_mask"].sum())
    for r in rows[:PLANTED_LAYER]:
        assert r["relative_shift"] <= 1e-6 and r["explained"] is None and r["directions"] is None
    for r in rows[PLANTED_LAYER:]:
        assert r["relative_shift"] > 1e-3
    # at the changed layer's output every shift vector is a multiple of u: one direction
    at = rows[PLANTED_LAYER]
    assert at["explained"][0] > 0.9999
    assert abs(float(at["directions"][0] @ u.double() / u.norm())) > 0.99
    assert sum(at["explained"]) <= 1.0 + 1e-9 and len(at["explained"]) == 3


def test_residual_shift_matches_a_hand_computation(planted, prompts_only):
    # Layer 3 (after the planted layer) has a shift of many directions; check every number
    # against the plain formulas: mean_t ‖δ_t‖/‖h_ref,t‖, and the UNcentred SVD of the stacked δ.
    policy, ref, _ = planted
    ids, mask = prompts_only["input_ids"], prompts_only["attention_mask"]
    row = residual_shift(policy, ref, ids, mask, top_k=4)[3]
    keep = mask.bool()
    h_ref = layer_outputs(ref, ids, mask)[3][keep].double()
    delta = layer_outputs(policy, ids, mask)[3][keep].double() - h_ref
    relative = (delta.norm(dim=-1) / h_ref.norm(dim=-1)).mean()
    assert row["relative_shift"] == pytest.approx(float(relative), rel=1e-6)
    _, sv, vh = torch.linalg.svd(delta, full_matrices=False)
    assert row["explained"] == pytest.approx((sv[:4] ** 2 / (sv**2).sum()).tolist(), rel=1e-6)
    assert 0.5 < row["explained"][0] < 0.9999  # more than one direction here
    for k in range(4):
        assert abs(float(row["directions"][k] @ vh[k])) == pytest.approx(1.0, abs=1e-6)
        assert float(row["directions"][k] @ delta.mean(0)) >= 0  # signed along the mean shift
    assert torch.allclose(row["mean_shift"], delta.mean(0))


def test_residual_shift_counts_real_tokens_only(planted, tok):
    # A padded batch must give the token-weighted mean of the rows run alone (no padding).
    policy, ref, _ = planted
    enc = encode(tok, PROMPTS)
    whole = residual_shift(policy, ref, enc["input_ids"], enc["attention_mask"], batch_size=3)
    singles = [encode(tok, [p]) for p in PROMPTS]
    parts = [residual_shift(policy, ref, e["input_ids"], e["attention_mask"]) for e in singles]
    counts = [int(e["attention_mask"].sum()) for e in singles]
    assert len(set(counts)) > 1  # the batch really is padded
    for layer in range(PLANTED_LAYER, 4):
        rel = sum(n * p[layer]["relative_shift"] for n, p in zip(counts, parts)) / sum(counts)
        mean = sum(n * p[layer]["mean_shift"] for n, p in zip(counts, parts)) / sum(counts)
        assert whole[layer]["relative_shift"] == pytest.approx(rel, rel=1e-5)
        assert torch.allclose(whole[layer]["mean_shift"], mean, rtol=1e-5, atol=1e-9)


def test_planted_patching_recovers_the_gap_at_the_changed_layer(planted, batch):
    policy, ref, _ = planted
    out = activation_patching(policy, ref, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    assert abs(out["gap"]) > 1e-2
    fractions = {p["layer"]: p["fraction"] for p in out["layers"]}
    assert fractions[0] == pytest.approx(0.0, abs=1e-3)
    assert fractions[1] == pytest.approx(0.0, abs=1e-3)
    assert fractions[2] == pytest.approx(1.0, abs=1e-3)
    assert fractions[3] == pytest.approx(1.0, abs=1e-3)
    args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    some = activation_patching(policy, ref, *args, layers=[1, 2], batch_size=3)
    assert [p["layer"] for p in some["layers"]] == [1, 2]
    assert some["gap"] == pytest.approx(out["gap"], rel=1e-4)
    assert some["layers"][1]["fraction"] == pytest.approx(1.0, abs=1e-3)


def test_patching_scores_completion_tokens_only(batch):
    # No gap -> no fraction; and the log-probs are the completion sums, checked by hand.
    model = tiny_model(layers=2)
    args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    out = activation_patching(model, copy.deepcopy(model), *args)
    assert out["gap"] == 0.0 and all(p["fraction"] is None for p in out["layers"])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = torch.log_softmax(logits[:, :-1].double(), -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    assert out["ref_logp"] == pytest.approx(float((logp * batch["completion_mask"][:, 1:]).sum()), rel=1e-5)


def test_replace_hidden_tensor_and_tuple_outputs():
    old, new = torch.zeros(1, 2, 3), torch.ones(1, 2, 3, dtype=torch.float64)
    assert torch.equal(_replace_hidden(old, new), torch.ones(1, 2, 3))
    out = _replace_hidden((old, "cache", None), new)
    assert isinstance(out, tuple) and out[1:] == ("cache", None) and torch.equal(out[0], torch.ones(1, 2, 3))


def test_planted_direction_and_logit_lens(tok, prompts_only):
    """Layer 1's down_proj gains s·d vᵀ with d = γ⁻¹ ⊙ W_U[t] and v = ā/‖ā‖ (ā: the mean input of
    that down_proj over real tokens), so the shift at layer 1's output is δ_t = s d (v·a_t), its
    mean δ̄ = s‖ā‖ d, and the lens reads W_U(γ ⊙ δ̄) = s‖ā‖ W_U W_U[t]: token t first, with
    Δlogit s‖ā‖ ‖W_U[t]‖²."""
    ids, mask = prompts_only["input_ids"], prompts_only["attention_mask"]
    ref = tiny_model(layers=2)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        ref.model.norm.weight.copy_(torch.exp(2 * torch.rand(64, generator=g) - 1))  # γ ≠ 1
    gamma, w_u = ref.model.norm.weight.detach(), ref.lm_head.weight.detach()
    target = tok.convert_tokens_to_ids("A")
    d = w_u[target] / gamma
    down = ref.model.layers[1].mlp.down_proj
    seen = []
    handle = down.register_forward_hook(lambda m, args, out: seen.append(args[0].detach()))
    with torch.no_grad():
        ref(input_ids=ids, attention_mask=mask)
    handle.remove()
    a_bar = seen[0][mask.bool()].mean(0)
    policy, s = copy.deepcopy(ref), 0.5
    with torch.no_grad():
        policy.model.layers[1].mlp.down_proj.weight += s * torch.outer(d, a_bar / a_bar.norm())

    rows = residual_shift(policy, ref, ids, mask)
    assert rows[1]["explained"][0] > 0.9999
    assert float(rows[1]["directions"][0] @ (d / d.norm()).double()) > 0.99  # signed: along +d
    lens = logit_lens_of_shift(policy, ref, ids, mask, tok, top=5)
    assert lens[0]["promoted"] == [] and lens[0]["demoted"] == []  # no shift before layer 1
    top = lens[1]["promoted"][0]
    assert top["id"] == target and top["token"] == "A" and len(lens[1]["promoted"]) == 5
    expected = s * float(a_bar.norm()) * float(w_u[target] @ w_u[target])
    assert top["logit"] == pytest.approx(expected, rel=1e-3)
    assert lens[1]["demoted"][0]["id"] == int(torch.argmin(w_u @ w_u[target]))


def _lora_policy(base):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    policy = get_peft_model(copy.deepcopy(base), config)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return policy.eval()


def test_lora_policy_against_base_or_its_own_disabled_adapter(batch, prompts_only):
    base = tiny_model(layers=2)
    policy = _lora_policy(base)
    ids, mask = prompts_only["input_ids"], prompts_only["attention_mask"]
    separate = residual_shift(policy, base, ids, mask)
    assert all(r["relative_shift"] > 1e-4 for r in separate)  # LoRA on layer 0 already shifts
    for ref in (None, policy.get_base_model()):
        same = residual_shift(policy, ref, ids, mask)
        for a, b in zip(separate, same):
            assert a["relative_shift"] == pytest.approx(b["relative_shift"], rel=1e-6)
    args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    p_sep, p_none = activation_patching(policy, base, *args), activation_patching(policy, None, *args)
    assert p_none["gap"] == pytest.approx(p_sep["gap"], rel=1e-5) and abs(p_sep["gap"]) > 1e-3
    assert p_sep["layers"][-1]["fraction"] == pytest.approx(1.0, abs=1e-3)  # head unchanged
    report = inspect_shift(policy, None, tiny_tokenizer(), PROMPTS[:2])
    assert {t["type"] for t in report["summary"]["types"]} == {"q", "v"}
    assert report["summary"]["first_shifted_layer"] == 0
    # the adapter is switched back on afterwards
    with torch.no_grad():
        assert not torch.allclose(policy(input_ids=ids).logits, base(input_ids=ids).logits)


def test_encode_by_hand(tok):
    enc = encode(tok, ["ab", "c"], ["x", "yz"], max_length=4)
    a, b, c, x, y = (tok.convert_tokens_to_ids(ch) for ch in "abcxy")
    eos = tok.eos_token_id
    assert enc["input_ids"].tolist() == [[a, b, x, eos], [c, y, tok.convert_tokens_to_ids("z"), eos]]
    enc = encode(tok, ["ab", "c"], ["x", "y"])
    assert enc["input_ids"][1].tolist() == [c, y, eos, eos]  # right-padded with EOS (no pad token)
    assert enc["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert enc["completion_mask"].tolist() == [[0, 0, 1, 1], [0, 1, 1, 0]]
    assert encode(tok, ["abcdef"], ["x"], max_length=3)["completion_mask"].tolist() == [[0, 0, 0]]


def test_inspect_shift_report_locates_the_planted_change(planted, tok):
    policy, ref, _ = planted
    report = inspect_shift(policy, ref, tok, PROMPTS, COMPLETIONS, batch_size=2)
    json.dumps(report)  # JSON-able as is
    s = report["summary"]
    assert s["top_matrices"] == ["model.layers.2.mlp.down_proj.weight"]
    assert s["layers"][0]["layer"] == 2 and s["layers"][0]["delta_sq_share"] == pytest.approx(1.0)
    assert [t["type"] for t in s["types"]] == ["down"]
    assert s["top10pct_energy_share"] == pytest.approx(1.0) and s["weights_localised"]
    assert s["shifted_layers"] == [2, 3] and s["first_shifted_layer"] == 2
    assert 2 in s["top1_dominant_layers"] and s["patching_half_layer"] == 2
    assert [r["layer"] for r in report["residual"]] == [0, 1, 2, 3]
    assert "directions" not in report["residual"][0]
    assert "model.layers.2.mlp.down_proj.weight" in format_report(report)
    plain = inspect_shift(policy, ref, tok, PROMPTS)
    assert plain["patching"] is None and plain["summary"]["patching_half_layer"] is None
    with pytest.raises(ValueError):
        inspect_shift(policy, ref, tok, PROMPTS, COMPLETIONS[:2])


def test_summary_definitions_by_hand():
    energies = [10.0, 5.0] + [1.0] * 9  # 11 matrices: the top ceil(1.1) = 2 hold 15 of 24
    rows = [{"delta_norm": e**0.5, "shape": [2, 2]} for e in energies]
    rows.append({"delta_norm": 100.0, "shape": [2]})  # a vector: not a matrix, left out
    assert top_energy_share(rows) == pytest.approx(15 / 24)
    assert top_energy_share([{"delta_norm": 0.0, "shape": [2, 2]}]) is None
    weights = [
        {"name": n, "layer": layer, "type": t, "shape": [2, 2], "delta_norm": d, "relative_change": r}
        for n, layer, t, d, r in [("a", 0, "q", 3.0, 0.3), ("b", 1, "q", 1.0, 0.1), ("c", 1, "up", 0.0, 0.0)]
    ]
    residual = [
        {"layer": 0, "relative_shift": 0.0, "explained": None},
        {"layer": 1, "relative_shift": 0.2, "explained": [0.9, 0.1]},
        {"layer": 2, "relative_shift": 0.5, "explained": [0.4, 0.3]},
        {"layer": 3, "relative_shift": 0.3, "explained": [0.6, 0.2]},
    ]
    patching = {"layers": [{"layer": i, "fraction": f} for i, f in enumerate([0.1, 0.49, 0.5, 1.0])]}
    s = summarize(weights, residual, patching)
    assert s["top_matrices"] == ["a", "b"] and s["total_delta_sq"] == pytest.approx(10.0)
    assert s["layers"] == [
        {"layer": 0, "mean_relative_change": 0.3, "delta_sq_share": pytest.approx(0.9)},
        {"layer": 1, "mean_relative_change": 0.05, "delta_sq_share": pytest.approx(0.1)},
    ]
    assert [t["type"] for t in s["types"]] == ["q"]  # "up" did not change
    assert s["top10pct_energy_share"] == pytest.approx(0.9) and s["weights_localised"]
    assert s["shifted_layers"] == [1, 2, 3] and s["first_shifted_layer"] == 1
    assert s["largest_shift_layer"] == 2
    assert s["top1_dominant_layers"] == [1, 3] and s["direction_localised"]  # 2 of 3 > half
    assert s["patching_half_layer"] == 2


def test_the_inspect_command_finds_a_planted_shift(tmp_path, capsys):
    """`dpokit inspect` end to end: a policy saved with one changed matrix, a pair file (its
    chosen answers enable patching): the JSON names that matrix first; bad input is one line."""
    import json as _json

    from dpokit.cli import main
    from dpokit.testing import tiny_model, tiny_tokenizer

    ref, policy = tiny_model(), tiny_model()
    with torch.no_grad():
        policy.model.layers[1].mlp.down_proj.weight.add_(0.5)
    for name, model in (("ref", ref), ("policy", policy)):
        model.save_pretrained(tmp_path / name)
        tiny_tokenizer().save_pretrained(tmp_path / name)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(_json.dumps({"prompt": f"question {i}?", "chosen": f"answer {i}", "rejected": "no"}) + "\n"
                             for i in range(4)))
    out = tmp_path / "shift.json"
    assert main(["inspect", str(tmp_path / "policy"), "--ref", str(tmp_path / "ref"), "--prompts", str(pairs),
                 "--json", str(out)]) == 0
    report = _json.loads(out.read_text())
    assert report["weights"][0]["name"].endswith("layers.1.mlp.down_proj.weight")
    assert report["patching"] is not None  # the chosen answers were used as completions
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "policy"), "--prompts", str(pairs)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--ref is needed" in err
