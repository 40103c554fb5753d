"""Low-rank probes: which LoRA adapters the low-rank study trains, resolved for any decoder.

A probe is DPO with LoRA restricted in rank or in place. If a rank-1 adapter on one group of
modules recovers most of what the full fine-tune gains, the change DPO makes is localised; if
only high ranks on every module do, it is spread (dpokit.shift.probe_stats decides which).

Groups (the modules and layers an adapter may touch):

    all            every attention and MLP linear map of every decoder layer
    attention      the attention maps (types q, k, v, qkv, o) of every layer
    mlp            the MLP maps (types gate, up, down) of every layer
    bottom_third   every attention and MLP map of layers 0 .. k−1
    top_third      every attention and MLP map of layers L−k .. L−1

with L decoder layers and k = third(L), the nearest integer to L/3 (halves up), at least 1:
L = 30 → k = 10 (layers 0–9 and 20–29); L = 4 → k = 1; L = 5 → k = 2. The two thirds are
disjoint for L ≥ 2. Module types come from each module's name (dpokit.shift.weights.
module_type); linear maps of any other type (none in llama-like models) are left out of every
group and listed in `left_out`.

Target names are paths inside a decoder layer (`self_attn.q_proj`, `mlp.down_proj`): peft
matches them as suffixes of the full module names, and a path tells GPT-2's two `c_proj`
apart. Layers go to peft as `layers_to_transform` (TrainConfig's `lora.layers`).

A LoRA adapter of rank r on a d_out × d_in map adds A (r × d_in) and B (d_out × r), so

    lora_param_count = Σ over adapted maps of r · (d_in + d_out)

(Hu et al. 2021, LoRA, §4.1); tested equal to peft's trainable-parameter count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dpokit.shift.activations import decoder_layers
from dpokit.shift.weights import _LAYER, module_type

ATTENTION_TYPES = ("q", "k", "v", "qkv", "o")
MLP_TYPES = ("gate", "up", "down")
GROUPS = ("all", "attention", "mlp", "bottom_third", "top_third")
PLACE_GROUPS = GROUPS[1:]  # the single-group probes (all = the rank sweep)


def third(n_layers: int) -> int:
    """Layers in a third of an `n_layers` stack: round(L/3) with halves up, at least 1."""
    if n_layers < 2:
        raise ValueError(f"layer thirds need at least 2 decoder layers, got {n_layers}")
    return max(1, (n_layers + 1) // 3)


def group_layers(group: str, n_layers: int) -> list[int]:
    """The decoder layer indices of `group` (module docstring)."""
    if group not in GROUPS:
        raise ValueError(f"unknown layer group {group!r}; valid: {', '.join(GROUPS)}")
    if group == "bottom_third":
        return list(range(third(n_layers)))
    if group == "top_third":
        return list(range(n_layers - third(n_layers), n_layers))
    return list(range(n_layers))


def _is_linear(module) -> bool:
    # GPT-2 stores its projections as transformers' Conv1D (a transposed linear map).
    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"


def _shape(module) -> tuple[int, int]:
    """(d_in, d_out) of a linear map (Conv1D keeps its weight as d_in × d_out)."""
    w = module.weight
    return (w.shape[0], w.shape[1]) if type(module).__name__ == "Conv1D" else (w.shape[1], w.shape[0])


def layer_linears(model) -> dict[str, dict]:
    """The linear maps of a decoder layer: {path inside the layer: {"type", "d_in", "d_out"}}.
    Raises ValueError when the layers differ (a heterogeneous stack is not supported)."""
    found = []
    for layer in decoder_layers(model):
        maps = {}
        for path, m in layer.named_modules():
            if not path or not _is_linear(m) or "lora_" in path:
                continue
            path = path.removesuffix(".base_layer")  # a peft-wrapped map, under its own path
            maps[path] = {"type": module_type(f"{path}.weight"), "d_in": _shape(m)[0], "d_out": _shape(m)[1]}
        found.append(maps)
    if any(f != found[0] for f in found[1:]):
        raise ValueError("decoder layers differ in their linear maps; probes need a uniform stack")
    return found[0]


@dataclass(frozen=True)
class ProbeSpec:
    """One probe: LoRA of rank `r` on `target_modules` (paths inside a layer) of `layers`."""

    name: str
    group: str
    r: int
    target_modules: tuple[str, ...]
    layers: tuple[int, ...]
    n_layers: int

    @property
    def lora_layers(self) -> list[int]:
        """`lora.layers` for this probe: [] when it covers every layer."""
        return [] if len(self.layers) == self.n_layers else list(self.layers)


def group_targets(linears: dict[str, dict], group: str) -> list[str]:
    types = ATTENTION_TYPES if group == "attention" else MLP_TYPES if group == "mlp" else ATTENTION_TYPES + MLP_TYPES
    targets = sorted(path for path, info in linears.items() if info["type"] in types)
    if not targets:
        raise ValueError(f"group {group!r}: the decoder layers have no linear map of type {', '.join(types)}")
    return targets


def left_out(linears: dict[str, dict]) -> list[str]:
    """Linear maps in no group (neither attention nor MLP by name)."""
    return sorted(p for p, info in linears.items() if info["type"] not in ATTENTION_TYPES + MLP_TYPES)


def probe_name(group: str, r: int) -> str:
    return f"lora-r{r}" if group == "all" else f"lora-{group.replace('_', '-')}-r{r}"


def probe_specs(model, ranks: list[int], group_r: int, groups: list[str]) -> list[ProbeSpec]:
    """The rank sweep on every module (`ranks`, group "all"), then each of `groups` at rank
    `group_r`; a group equal to a probe already listed is not repeated."""
    if any(r < 1 for r in ranks) or group_r < 1:
        raise ValueError(f"LoRA ranks must be ≥ 1, got ranks {ranks} and group rank {group_r}")
    linears, n = layer_linears(model), len(decoder_layers(model))
    specs: list[ProbeSpec] = []
    for group, r in [("all", r) for r in ranks] + [(g, group_r) for g in groups]:
        spec = ProbeSpec(probe_name(group, r), group, r, tuple(group_targets(linears, group)),
                         tuple(group_layers(group, n)), n)
        if spec.name not in {s.name for s in specs}:
            specs.append(spec)
    return specs


def lora_param_count(model, spec: ProbeSpec) -> int:
    """Σ over the adapted maps of r · (d_in + d_out) (module docstring)."""
    linears = layer_linears(model)
    per_layer = sum(spec.r * (linears[p]["d_in"] + linears[p]["d_out"]) for p in spec.target_modules)
    return per_layer * len(spec.layers)


def adapted_modules(tensors, *, trained_only: bool = False) -> dict[int, set[str]]:
    """{decoder layer: the paths inside it that hold LoRA weights}, read from the adapter's
    own tensors (`...layers.3.self_attn.q_proj.lora_B...`): `tensors` is a peft model or
    (name, tensor) pairs (a saved adapter file). `trained_only`: only maps whose B is non-zero
    (B starts at zero, so a zero B means the map never moved)."""
    out: dict[int, set[str]] = {}
    named = tensors.named_parameters() if hasattr(tensors, "named_parameters") else tensors
    for name, tensor in named:
        if ".lora_B." not in name:
            continue
        if trained_only and not bool(tensor.detach().abs().sum() > 0):
            continue
        match = _LAYER.search(name)
        if match is None:
            continue
        inner = name[match.end():].split(".lora_B.", 1)[0]
        out.setdefault(int(match.group(1)), set()).add(inner)
    return out
