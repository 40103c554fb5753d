"""Where the weights moved: per-tensor change of a policy against its reference.

For every parameter tensor W (named the same in both models), with ΔW = W_π − W_ref:

    delta_norm       ‖ΔW‖_F
    relative_change  ‖ΔW‖_F / ‖W_ref‖_F          (None when W_ref = 0 and ΔW ≠ 0)
    effective_rank   effective_rank(ΔW, energy)  (2-D tensors only; None for vectors)

Names are parsed generically (no architecture class is assumed):

    layer   the integer after a `layers.` / `layer.` / `h.` / `blocks.` path component
            (`model.layers.3.mlp.down_proj.weight` -> 3); None outside the decoder stack
    type    the first pattern of `MODULE_TYPES` matching the module's own name (the path
            component before `.weight` / `.bias`), e.g. q_proj -> q, down_proj -> down,
            embed_tokens -> embed, lm_head -> head, *norm* -> norm; otherwise "other"

peft: a LoRA policy is compared through a merged copy (`merge_and_unload()` on a deepcopy;
the caller's model is untouched). peft-only tensors (lora_A/B, modules_to_save copies) are
skipped and peft's renamings (`base_model.model.`, `.base_layer.`, `.original_module.`)
undone, so a policy's base model with its LoRA layers still inside can serve as the reference.

Tied embeddings (input embedding and output head the same tensor) are reported once, as
the embedding, with `tied: true`.
"""

from __future__ import annotations

import copy
import re
from collections import defaultdict

import torch

from dpokit.models import is_peft_model

# (regex on the module's own name, type). First match wins; order matters (e.g. "o_proj"
# before the generic "proj" patterns, "embed_out" = head before "embed").
MODULE_TYPES: list[tuple[str, str]] = [
    (r"^(q_proj|query|q_lin|wq|to_q)$", "q"),
    (r"^(k_proj|key|k_lin|wk|to_k)$", "k"),
    (r"^(v_proj|value|v_lin|wv|to_v)$", "v"),
    (r"^(qkv_proj|c_attn|query_key_value|Wqkv)$", "qkv"),
    (r"^(o_proj|out_proj|out_lin|wo|dense)$", "o"),
    (r"^(gate_proj|w1)$", "gate"),
    (r"^(up_proj|w3|fc1|c_fc|dense_h_to_4h|gate_up_proj)$", "up"),
    (r"^(down_proj|w2|fc2|dense_4h_to_h|c_proj)$", "down"),
    (r"^(lm_head|embed_out|output)$", "head"),
    (r"(embed|wte|wpe|word_embeddings)", "embed"),
    (r"(norm|^ln_?\w*$)", "norm"),
]
_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks)\.(\d+)\.")


def module_type(name: str) -> str:
    """Type of a parameter from its name (see MODULE_TYPES): `...self_attn.q_proj.weight` -> q."""
    parts = name.split(".")
    own = parts[-2] if len(parts) > 1 and parts[-1] in ("weight", "bias") else parts[-1]
    if own == "c_proj":  # GPT-2 names both the attention output and the MLP output c_proj
        return "o" if len(parts) > 2 and "attn" in parts[-3] else "down"
    for pattern, kind in MODULE_TYPES:
        if re.search(pattern, own):
            return kind
    return "other"


def layer_index(name: str) -> int | None:
    """Decoder layer index in a parameter name, or None (embeddings, head, final norm)."""
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def effective_rank(delta: torch.Tensor, energy: float = 0.9) -> int:
    """Fewest singular values holding `energy` of ΔW's squared Frobenius norm.

    With σ_1 ≥ σ_2 ≥ ... the singular values of ΔW (‖ΔW‖_F² = Σ σ_i²):

        effective_rank = min { k : Σ_{i≤k} σ_i² ≥ energy · Σ_i σ_i² }

    and 0 for ΔW = 0. Example: diag(3, 2, 1) has energies 9, 4, 1 (total 14); 90% is 12.6 and
    9 < 12.6 ≤ 9 + 4, so the rank is 2. Computed in float64; the comparison allows a relative
    slack of 1e-12 so that a threshold met exactly (e.g. diag(1, 1) at 0.5 -> 1) is not lost to
    rounding."""
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    if delta.dim() != 2:
        raise ValueError(f"effective_rank needs a matrix, got shape {tuple(delta.shape)}")
    sq = torch.linalg.svdvals(delta.detach().to(torch.float64)) ** 2
    total = float(sq.sum())
    if total == 0.0:
        return 0
    cumulative = torch.cumsum(sq, 0)
    needed = energy * total * (1.0 - 1e-12)
    return int((cumulative < needed).sum()) + 1


def _unwrapped(model):
    """The plain transformers model under a peft wrapper (LoRA layers stay inside it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def merged(model):
    """A model whose parameters are the effective weights: a merged deepcopy for a peft
    model (the argument is not modified), the model itself otherwise."""
    if is_peft_model(model):
        return copy.deepcopy(model).merge_and_unload()
    return model


def _plain_name(name: str) -> str:
    name = name.removeprefix("base_model.model.")
    return name.replace(".base_layer.", ".").replace(".original_module.", ".")


def _is_adapter_tensor(name: str) -> bool:
    return any(part in name for part in ("lora_", ".modules_to_save.", "lora_magnitude"))


def effective_weights(model) -> dict[str, torch.Tensor]:
    """Parameter name (base-model naming) -> tensor, with a peft model merged, adapter tensors
    of an unwrapped model (a policy's base with LoRA layers inside) skipped so that its base
    weights remain, and shared tensors listed once (first name: the input embedding for tied
    heads)."""
    model = merged(model)
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.named_parameters(remove_duplicate=False):
        if _is_adapter_tensor(name) or id(tensor) in seen:
            continue
        seen.add(id(tensor))
        out[_plain_name(name)] = tensor.detach()
    return out


def _tied(model) -> bool:
    base = _unwrapped(model)
    get_in, get_out = getattr(base, "get_input_embeddings", None), getattr(base, "get_output_embeddings", None)
    if get_in is None or get_out is None or get_out() is None:
        return False
    return get_in().weight is get_out().weight


def _row(name: str, w_pi: torch.Tensor, w_ref: torch.Tensor, energy: float) -> dict:
    delta = w_pi.to(torch.float64) - w_ref.to(torch.float64)
    delta_norm, ref_norm = float(delta.norm()), float(w_ref.to(torch.float64).norm())
    if ref_norm > 0:
        relative = delta_norm / ref_norm
    else:
        relative = 0.0 if delta_norm == 0 else None
    return {
        "name": name,
        "layer": layer_index(name),
        "type": module_type(name),
        "shape": list(w_pi.shape),
        "delta_norm": delta_norm,
        "ref_norm": ref_norm,
        "relative_change": relative,
        "effective_rank": effective_rank(delta, energy) if delta.dim() == 2 else None,
    }


def weight_changes(policy, ref, *, energy: float = 0.9) -> list[dict]:
    """One row per parameter tensor (see module docstring), largest relative change first
    (ties keep model order; a None relative change sorts first). `ref=None` or `ref=policy`
    with a peft policy: the reference is the policy's base weights. Raises ValueError when the
    two models' tensor names or shapes differ."""
    if ref is None or ref is policy:
        if not is_peft_model(policy):
            raise ValueError("ref=None needs a peft policy (the reference is its base weights)")
        ref = _unwrapped(policy)
    pi, rf = effective_weights(policy), effective_weights(ref)
    if set(pi) != set(rf):
        only = sorted(set(pi) ^ set(rf))[:5]
        raise ValueError(f"policy and reference have different parameters, e.g. {only}")
    tied = _tied(policy)
    rows = []
    with torch.no_grad():
        for name, w_pi in pi.items():
            w_ref = rf[name].to(w_pi.device)
            if w_pi.shape != w_ref.shape:
                raise ValueError(f"{name}: shape {tuple(w_pi.shape)} vs reference {tuple(w_ref.shape)}")
            row = _row(name, w_pi, w_ref, energy)
            row["tied"] = tied and row["type"] == "embed"
            rows.append(row)
    return sorted(rows, key=lambda r: _inf_if_none(r["relative_change"]), reverse=True)


def _inf_if_none(value):
    return float("inf") if value is None else value


def by_layer_and_type(rows: list[dict]) -> list[dict]:
    """Aggregate `weight_changes` rows per (layer, type):

        count                 tensors in the group
        mean_relative_change  mean of relative_change over the group (None entries skipped)
        max_effective_rank    max effective_rank (None when the group has only vectors)
        delta_sq              Σ ‖ΔW‖_F² over the group

    Sorted by layer (None = outside the stack, last) then type."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["layer"], row["type"])].append(row)
    out = []
    for (layer, kind), members in groups.items():
        rel = [r["relative_change"] for r in members if r["relative_change"] is not None]
        ranks = [r["effective_rank"] for r in members if r["effective_rank"] is not None]
        out.append({
            "layer": layer,
            "type": kind,
            "count": len(members),
            "mean_relative_change": sum(rel) / len(rel) if rel else None,
            "max_effective_rank": max(ranks) if ranks else None,
            "delta_sq": sum(r["delta_norm"] ** 2 for r in members),
        })
    return sorted(out, key=lambda g: (g["layer"] is None, g["layer"] or 0, g["type"]))
