"""Which pairs each optimizer step takes.

Epoch e uses a permutation of the training pairs seeded by (seed, e); optimizer step s takes the
next `batch_size × grad_accum × processes` pairs of it. The data position is therefore a
function of the step alone, so a resumed run takes the same pairs as the uninterrupted one.
"""

from __future__ import annotations

import math

import torch

from dpokit import accel
from dpokit.config import TrainConfig


class StepOrder:
    """Which pairs optimizer step `s` uses (see module docstring)."""

    def __init__(self, n_items: int, pairs_per_step: int, seed: int) -> None:
        self.n, self.per_step, self.seed = n_items, pairs_per_step, seed
        self.steps_per_epoch = math.ceil(n_items / pairs_per_step)
        self._perm_epoch, self._perm = -1, None

    def indices(self, step: int) -> list[int]:
        epoch, k = divmod(step, self.steps_per_epoch)
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g).tolist(), epoch
        return self._perm[k * self.per_step : (k + 1) * self.per_step]


def total_steps(cfg: TrainConfig, order: StepOrder) -> int:
    return cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * order.steps_per_epoch))


def pairs_per_step(cfg: TrainConfig, place: accel.Placement) -> int:
    """Pairs in one optimizer step over all ranks: batch_size × grad_accum on each."""
    return cfg.batch_size * cfg.grad_accum * place.world_size
