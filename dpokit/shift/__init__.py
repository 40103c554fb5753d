"""Where the DPO shift lives: weight changes, residual-stream shifts, their principal
directions and logit-lens read-out, and activation patching (docs/shift.md)."""

from dpokit.shift.activations import (
    activation_patching,
    logit_lens_of_shift,
    residual_shift,
    shift_lens,
)
from dpokit.shift.report import format_report, inspect_shift
from dpokit.shift.weights import by_layer_and_type, effective_rank, weight_changes

__all__ = [
    "activation_patching",
    "by_layer_and_type",
    "effective_rank",
    "format_report",
    "inspect_shift",
    "logit_lens_of_shift",
    "residual_shift",
    "shift_lens",
    "weight_changes",
]
