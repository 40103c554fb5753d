"""`dpokit study lowrank`: is DPO's change on the sentiment task localised or spread?

Probes: DPO on the study's pairs with LoRA restricted in rank or in place (dpokit.shift.probe),
each at the same budget (steps, batch, pairs, β) as the full fine-tune:

    rank sweep     LoRA at r ∈ probe.ranks on every attention and MLP map of every layer
    place probes   LoRA at r = probe.group_r on one group: attention only, MLP only, the bottom
                   third of the layers, the top third of the layers

lora.alpha = probe.alpha_per_rank · r, so the adapter's scale α/r is the same at every rank;
the probes train at probe.lr (LoRA's updates are low-rank, so it is usually run at a larger
learning rate than the full model's `lr`). Every run is evaluated on the same held-out prompts
with the same sampling (dpokit.studies.common): ground-truth reward mean [95% CI], KL(π‖π_ref)
from policy samples. Per probe, its share of the full fine-tune's reward gain over the
reference, ā / b̄ with Fieller's paired 95% interval (dpokit.shift.probe_stats.share_of_gain),
and the verdict (probe_stats.verdict_rule): localised / low-rank / spread / undetermined.

Each probe's adapter is checked from its saved weights: the maps holding LoRA tensors are
exactly its group's (layers × modules), each was trained (B ≠ 0), and its trainable
parameters equal Σ r·(d_in + d_out) and peft's own count.

The study ends by inspecting the full fine-tune against the reference (dpokit.shift:
inspect_shift on inspect.prompts held-out prompts, patching on each prompt's best reference
sample) and puts the headline beside the probes (probe_stats.shift_headline): where the energy
of ΔW sits (by module type and by third of the stack), effective ranks, which layers carry
the residual shift and which layers patching moves.

The full fine-tune is kept with its weights (keep=True) for the inspection; with --resume a
stored run is reused only if its weights are still there.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

from dpokit.config import ConfigError, LoraConfig, ranged
from dpokit.shift.probe import (
    PLACE_GROUPS,
    ProbeSpec,
    adapted_modules,
    lora_param_count,
    probe_specs,
)
from dpokit.shift.probe_stats import (
    DEFAULT_THRESHOLD,
    per_prompt_means,
    share_of_gain,
    shift_headline,
    verdict,
)
from dpokit.studies.common import StudyConfig, open_study

TITLE = "Low-rank probes: where DPO's change lives on the sentiment task"


@dataclass
class ProbeStage:
    ranks: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])  # the rank sweep (every module)
    group_r: int = ranged(1, ge=1)  # rank of the single-group probes
    groups: list[str] = field(default_factory=lambda: list(PLACE_GROUPS))
    lr: float = ranged(3.0e-3, gt=0)  # the probes' learning rate (the full fine-tune trains at `lr`)
    alpha_per_rank: int = ranged(2, ge=1, note="lora.alpha = alpha_per_rank · r: scale α/r equal at every rank")
    threshold: float = ranged(DEFAULT_THRESHOLD, gt=0)  # share of the full gain the verdict asks for, ≤ 1


@dataclass
class InspectStage:
    enabled: bool = True  # inspect the full fine-tune against the reference at the end
    prompts: int = ranged(32, ge=1)  # held-out prompts (with their best reference sample for patching)
    max_length: int = ranged(128, ge=8)


@dataclass
class LowRankConfig(StudyConfig):
    probe: ProbeStage = field(default_factory=ProbeStage)
    inspect: InspectStage = field(default_factory=InspectStage)

    def validate(self, given: set[str] | None = None) -> None:
        super().validate(given)
        p = self.probe
        if self.lora.r != 0:
            raise ConfigError(f"lora.r must stay 0 in the low-rank study (the full fine-tune is the baseline; each probe "
                              f"sets its own LoRA from the probe section), got {self.lora.r}")
        if not p.ranks or any(r < 1 for r in p.ranks) or len(set(p.ranks)) != len(p.ranks):
            raise ConfigError(f"probe.ranks must be distinct LoRA ranks ≥ 1, got {p.ranks}")
        bad = [g for g in p.groups if g not in PLACE_GROUPS]
        if bad or len(set(p.groups)) != len(p.groups):
            raise ConfigError(f"probe.groups must be distinct names from {', '.join(PLACE_GROUPS)}, got {p.groups}")
        if p.threshold > 1:
            raise ConfigError(f"probe.threshold must be in (0, 1] (a share of the full fine-tune's gain), got {p.threshold:g}")


def lora_of(spec: ProbeSpec, alpha_per_rank: int) -> LoraConfig:
    return LoraConfig(r=spec.r, alpha=alpha_per_rank * spec.r, dropout=0.0, target_modules=list(spec.target_modules),
                      layers=spec.lora_layers)


def adapter_check(final_dir: str, spec: ProbeSpec, model, alpha_per_rank: int) -> dict:
    """What the saved adapter holds against what the probe asked for (module docstring)."""
    from safetensors.torch import load_file

    from dpokit.models import apply_lora

    tensors = load_file(str(Path(final_dir) / "adapter_model.safetensors"))
    expected = {layer: set(spec.target_modules) for layer in spec.layers}
    touched, trained = adapted_modules(tensors.items()), adapted_modules(tensors.items(), trained_only=True)
    fresh = apply_lora(copy.deepcopy(model), lora_of(spec, alpha_per_rank))
    return {
        "params_formula": lora_param_count(model, spec),
        "params_saved": sum(t.numel() for t in tensors.values()),
        "params_peft": fresh.get_nb_trainable_parameters()[0],
        "layers_touched": sorted(touched),
        "as_specified": touched == expected,
        "all_trained": trained == expected,
    }


def probe_row(spec: ProbeSpec, run: dict, check: dict, share: dict) -> dict:
    return {"probe": spec.name, "group": spec.group, "r": spec.r, "layers": list(spec.layers),
            "modules": list(spec.target_modules), "point": run["point"], "share": share["share"], "share_ci95": share["ci95"],
            "probe_gain": share["probe_gain"], "share_note": share["note"], **check, "run": run["run"],
            "heldout_prompts": len(run["heldout_rewards"])}


def inspect_full(s, cfg: LowRankConfig, final_dir: str) -> dict:
    """inspect_shift of the full fine-tune against the reference (written to inspect_full.json);
    patching completions: each prompt's highest-reward reference sample."""
    from dpokit.models import load_model
    from dpokit.shift import inspect_shift
    from dpokit.shift.activations import decoder_layers

    s.stage("inspecting the full fine-tune against the reference (weights, residual shift, patching)")
    policy = load_model(final_dir, dtype=cfg.dtype)[0]
    n = cfg.inspect.prompts
    prompts = s.ref_samples.prompts[:n]
    best = [row[max(range(len(row)), key=rewards.__getitem__)].text
            for row, rewards in zip(s.ref_samples.completions[:n], s.ref_samples.rewards[:n])]
    report = inspect_shift(policy, s.ref_model, s.tokenizer, prompts, best, max_length=cfg.inspect.max_length)
    (s.run_dir / "inspect_full.json").write_text(json.dumps(_plain(report), indent=1))
    return {"headline": shift_headline(report, len(decoder_layers(s.ref_model))), "summary": report["summary"],
            "patching": report["patching"], "file": str(s.run_dir / "inspect_full.json")}


def _plain(report: dict) -> dict:
    """The report without tensors (directions stay in Python only)."""
    return json.loads(json.dumps(report, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def run(cfg: LowRankConfig, log=print, resume: bool = False) -> dict:
    from dpokit.studies.lowrank_report import (
        findings_md,
        plot_probes,
        shift_md,
        table_md,
    )

    s = open_study(cfg, "lowrank", log, resume)
    p = cfg.probe
    specs = probe_specs(s.ref_model, p.ranks, p.group_r, p.groups)
    full = s.train(f"lowrank-full-b{cfg.beta:g}", s.pairs_path, method="dpo", setting="full", keep=True)
    ref_means, full_means = per_prompt_means(s.ref_samples.rewards), per_prompt_means(full["heldout_rewards"])
    rows = []
    for spec in specs:
        run_ = s.train(f"lowrank-{spec.name}", s.pairs_path, method="dpo-lora", setting=spec.name, keep=True,
                       lora=lora_of(spec, p.alpha_per_rank), lr=p.lr)
        share = share_of_gain(ref_means, per_prompt_means(run_["heldout_rewards"]), full_means)
        rows.append(probe_row(spec, run_, adapter_check(run_["final_dir"], spec, s.ref_model, p.alpha_per_rank), share))
    decision = verdict([{"name": r["probe"], "group": r["group"], "r": r["r"], "share": r["share"], "ci95": r["share_ci95"],
                         "kl": r["point"]["kl"]} for r in rows],
                       threshold=p.threshold, group_r=p.group_r, min_r=min(p.ranks), full_kl=full["point"]["kl"])
    full_gain = share_of_gain(ref_means, full_means, full_means)
    shift = inspect_full(s, cfg, full["final_dir"]) if cfg.inspect.enabled else None
    reference = s.reference_point()
    extra = {"reference": reference, "reference_heldout_rewards": s.ref_samples.rewards, "full": {"point": full["point"], "run": full["run"], "gain": full_gain["full_gain"],
                                              "gain_ci95": full_gain["full_gain_ci95"],
                                              "heldout_prompts": len(full["heldout_rewards"])},
             "verdict": decision, "shift": shift, "probe_settings": {"lr": p.lr, "alpha_per_rank": p.alpha_per_rank,
                                                                    "full_lr": cfg.lr, "steps": cfg.max_steps}}
    files = s.finish(rows, title=TITLE, plot=lambda fig: plot_probes(fig, rows, reference, full["point"], p.threshold),
                     sections=[table_md(rows, reference, extra["full"]), findings_md(decision, rows),
                               shift_md(shift)], extra=extra)
    return {"rows": rows, "extra": extra, "files": files}


CONFIG = LowRankConfig
