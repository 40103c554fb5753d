"""`inspect_shift`: every shift measure on one policy/reference pair, as a JSON-able dict.

Inputs are tokenized as dpokit tokenizes pairs: prompt = tokenizer(prompt) with the
tokenizer's special tokens; completion = tokenizer(completion, add_special_tokens=False) +
[EOS]; rows right-padded and cut to `max_length` tokens. The residual-stream measures run on
the prompts alone; patching runs on prompt + completion and scores the completion tokens.

Summary (the definitions; see docs/shift.md for how to read them):

    top_matrices              the 5 tensors with the largest relative change
    layers / types            per decoder layer (None: outside the stack) and per module type:
                              mean relative change and share of the total Σ‖ΔW‖_F², the
                              three largest by mean relative change (unchanged ones left out)
    top10pct_energy_share     over 2-D matrices sorted by ‖ΔW‖_F²: the share of Σ‖ΔW‖_F² held
                              by the top ⌈10%⌉ of them (uniform change ≈ 0.1 for equal sizes;
                              large matrices, e.g. the embedding, weigh more)
    weights_localised         top10pct_energy_share > 0.5
    shifted_layers            layers whose relative residual shift > SHIFT_EPS (1e-6)
    first_shifted_layer       the first of them (None if none)
    largest_shift_layer       the layer with the largest relative residual shift
    top1_dominant_layers      shifted layers where the top principal direction explains > 0.5
    direction_localised       top1_dominant_layers are more than half of the shifted layers
    patching_half_layer       first patched layer whose fraction ≥ 0.5 (None without patching)
"""

from __future__ import annotations

import math

import torch

from dpokit.data.collate import resolve_pad_id
from dpokit.shift.activations import activation_patching, residual_shift, shift_lens
from dpokit.shift.weights import by_layer_and_type, weight_changes

SHIFT_EPS = 1e-6


def encode(tokenizer, prompts: list[str], completions: list[str] | None = None, *, max_length: int = 256) -> dict:
    """Right-padded {input_ids, attention_mask, completion_mask} (see module docstring)."""
    if completions is not None and len(completions) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    eos = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    rows = []
    for i, prompt in enumerate(prompts):
        ids = list(tokenizer(prompt)["input_ids"])
        done = [0] * len(ids)
        if completions is not None:
            extra = list(tokenizer(completions[i], add_special_tokens=False)["input_ids"]) + eos
            ids, done = ids + extra, done + [1] * len(extra)
        rows.append((ids[:max_length], done[:max_length]))
    width = max(len(ids) for ids, _ in rows)
    out = {
        "input_ids": torch.full((len(rows), width), resolve_pad_id(tokenizer), dtype=torch.long),
        "attention_mask": torch.zeros((len(rows), width), dtype=torch.long),
        "completion_mask": torch.zeros((len(rows), width), dtype=torch.long),
    }
    for i, (ids, done) in enumerate(rows):
        out["input_ids"][i, : len(ids)] = torch.tensor(ids)
        out["attention_mask"][i, : len(ids)] = 1
        out["completion_mask"][i, : len(ids)] = torch.tensor(done)
    return out


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _groups(rows: list[dict], key: str, total: float) -> list[dict]:
    acc: dict = {}
    for r in rows:
        g = acc.setdefault(r[key], {key: r[key], "rel": [], "delta_sq": 0.0})
        if r["relative_change"] is not None:
            g["rel"].append(r["relative_change"])
        g["delta_sq"] += r["delta_norm"] ** 2
    out = [
        {key: g[key], "mean_relative_change": sum(g["rel"]) / len(g["rel"]) if g["rel"] else 0.0,
         "delta_sq_share": g["delta_sq"] / total if total > 0 else 0.0}
        for g in acc.values()
    ]
    out = [g for g in out if g["mean_relative_change"] > 0]
    return sorted(out, key=lambda g: g["mean_relative_change"], reverse=True)[:3]


def top_energy_share(rows: list[dict], fraction: float = 0.1) -> float | None:
    """Share of Σ‖ΔW‖_F² over 2-D matrices held by the top ⌈fraction·n⌉ of them (None if
    nothing changed)."""
    energies = sorted((r["delta_norm"] ** 2 for r in rows if len(r["shape"]) == 2), reverse=True)
    total = sum(energies)
    if not energies or total == 0:
        return None
    return sum(energies[: max(1, math.ceil(fraction * len(energies)))]) / total


def summarize(weights: list[dict], residual: list[dict], patching: dict | None) -> dict:
    """The report's `summary` (definitions in the module docstring)."""
    total = sum(r["delta_norm"] ** 2 for r in weights)
    share = top_energy_share(weights)
    shifted = [r["layer"] for r in residual if r["relative_shift"] > SHIFT_EPS]
    dominant = [r["layer"] for r in residual if r["layer"] in shifted and r["explained"][0] > 0.5]
    half = None
    if patching is not None:
        half = next((p["layer"] for p in patching["layers"] if (p["fraction"] or 0.0) >= 0.5), None)
    return {
        "top_matrices": [r["name"] for r in weights[:5] if r["delta_norm"] > 0],
        "layers": _groups(weights, "layer", total),
        "types": _groups(weights, "type", total),
        "total_delta_sq": total,
        "top10pct_energy_share": share,
        "weights_localised": share is not None and share > 0.5,
        "shifted_layers": shifted,
        "first_shifted_layer": shifted[0] if shifted else None,
        "largest_shift_layer": max(residual, key=lambda r: r["relative_shift"])["layer"] if residual else None,
        "top1_dominant_layers": dominant,
        "direction_localised": bool(shifted) and len(dominant) > len(shifted) / 2,
        "patching_half_layer": half,
    }


def inspect_shift(
    policy,
    ref,
    tokenizer,
    prompts: list[str],
    completions: list[str] | None = None,
    *,
    max_length: int = 256,
    batch_size: int = 8,
    top_k: int = 3,
    top_tokens: int = 10,
    energy: float = 0.9,
) -> dict:
    """Weights table, per-layer residual shift with principal directions, logit lens of the
    mean shift, patching fractions (when `completions` are given) and a summary; JSON-able.

    `ref=None` with a peft policy compares against the policy with its adapter disabled."""
    if not prompts:
        raise ValueError("inspect_shift needs at least one prompt")
    weights = weight_changes(policy, ref, energy=energy)
    device = _device(policy)
    enc = {k: v.to(device) for k, v in encode(tokenizer, prompts, max_length=max_length).items()}
    residual = residual_shift(
        policy, ref, enc["input_ids"], enc["attention_mask"], top_k=top_k, batch_size=batch_size
    )
    lens = shift_lens(policy, [r["mean_shift"] for r in residual], tokenizer, top=top_tokens)
    patching = None
    if completions is not None:
        enc = encode(tokenizer, prompts, completions, max_length=max_length)
        enc = {k: v.to(device) for k, v in enc.items()}
        patching = activation_patching(
            policy, ref, enc["input_ids"], enc["attention_mask"], enc["completion_mask"], batch_size=batch_size
        )
    return {
        "settings": {"prompts": len(prompts), "max_length": max_length, "top_k": top_k, "energy": energy},
        "weights": weights,
        "weights_by_layer_and_type": by_layer_and_type(weights),
        "residual": [{k: v for k, v in r.items() if k not in ("directions", "mean_shift")} for r in residual],
        "logit_lens": lens,
        "patching": patching,
        "summary": summarize(weights, residual, patching),
    }


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def format_report(report: dict, *, rows: int = 10) -> str:
    """A short plain-text rendering of an `inspect_shift` report."""
    s = report["summary"]
    lines = ["largest relative weight changes:"]
    for r in report["weights"][:rows]:
        lines.append(f"  {r['name']:<48} rel {_fmt(r['relative_change'])}  rank {_fmt(r['effective_rank'])}")
    lines.append(f"top 10% of matrices hold {_fmt(s['top10pct_energy_share'])} of Σ‖ΔW‖² "
                 f"(localised: {s['weights_localised']})")
    lines.append("layer  rel. shift  top-1 dir.  promoted tokens            patching fraction")
    patch = {p["layer"]: p["fraction"] for p in (report["patching"] or {}).get("layers", [])}
    for r, lens in zip(report["residual"], report["logit_lens"]):
        top1 = r["explained"][0] if r["explained"] else None
        tokens = " ".join(repr(t["token"]) for t in lens["promoted"][:3])
        lines.append(f"{r['layer']:>5}  {_fmt(r['relative_shift']):>10}  {_fmt(top1):>10}  "
                     f"{tokens:<26} {_fmt(patch.get(r['layer']))}")
    lines.append(f"first shifted layer {s['first_shifted_layer']}, largest {s['largest_shift_layer']}; "
                 f"top-1 direction dominant at {len(s['top1_dominant_layers'])}/{len(s['shifted_layers'])} "
                 f"shifted layers (localised: {s['direction_localised']})")
    return "\n".join(lines)
