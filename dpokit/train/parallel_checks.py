"""What a data-parallel launch may ask of dpokit's trainer: each engine or launch setting it does
not honour is one ConfigError naming the setting, before any model is loaded — refused, never
silently ignored (an FSDP launch on CPU processes is reported by accelerate as plain multi-CPU,
see dpokit.accel.requested_engine, so without these checks it would run as DDP)."""

from __future__ import annotations

from dpokit import accel
from dpokit.config import ConfigError, TrainConfig


def check_data_parallel(cfg: TrainConfig, place: accel.Placement) -> None:
    """What a data-parallel run cannot do (yet), as one-line config errors."""
    if not place.distributed:
        return
    if place.kind == "DEEPSPEED":
        import importlib.util

        why = "the deepspeed package is not installed" if importlib.util.find_spec("deepspeed") is None else "dpokit does not drive it"
        raise ConfigError(f"accelerate's DEEPSPEED engine: {why}; launch with the fsdp config (weights, gradients and "
                          "optimizer state sharded, as ZeRO-3) or a DDP config")
    if place.kind not in ("MULTI_CPU", "MULTI_GPU", "FSDP"):
        raise ConfigError(f"accelerate's {place.kind} engine: not supported by dpokit's trainer; launch with a DDP or the fsdp config")
    if cfg.optimizer_in_backward:
        raise ConfigError("optimizer_in_backward updates parameters before the gradients are reduced: not with several processes")
    if place.fsdp:
        _check_fsdp(cfg, accel.fsdp_settings())


def _check_fsdp(cfg: TrainConfig, plugin) -> None:
    """The FSDP launch settings dpokit honours; the others are refused, not ignored."""
    from torch.distributed.fsdp import CPUOffloadPolicy

    if plugin.fsdp_version != 2:
        raise ConfigError(f"fsdp_version {plugin.fsdp_version} in the launch config: dpokit runs FSDP2 only; set fsdp_version: 2")
    if isinstance(plugin.cpu_offload, CPUOffloadPolicy):
        raise ConfigError("fsdp_offload_params: true in the launch config: not supported by dpokit yet; set it to false")
    if plugin.cpu_ram_efficient_loading:
        raise ConfigError("fsdp_cpu_ram_efficient_loading: true in the launch config: dpokit loads the whole model on "
                          "every rank before sharding it; set it to false")
    if plugin.activation_checkpointing:
        raise ConfigError("fsdp_activation_checkpointing in the launch config: use gradient_checkpointing=true in dpokit's config instead")
    if plugin.state_dict_type.name != "SHARDED_STATE_DICT":
        raise ConfigError(f"fsdp_state_dict_type {plugin.state_dict_type.name}: dpokit writes sharded checkpoints and a full "
                          "final model; set fsdp_state_dict_type: SHARDED_STATE_DICT")
    if cfg.reference == "adapter":
        raise ConfigError("reference=adapter under FSDP: its forward passes bypass the sharded engine; use reference=cached "
                          "(the cache is computed from the same starting weights)")
