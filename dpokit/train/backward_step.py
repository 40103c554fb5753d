"""Optimizer step inside the backward pass: each parameter is updated, and its gradient
freed, as soon as that gradient is complete.

Why: a full fine-tune keeps weights, gradients and two AdamW moments resident; for the 135M
model that is 0.54 + 0.54 + 1.08 GB. Updating each parameter from its post-accumulate-grad
hook means at most one parameter's gradient exists at a time (the 113 MB tied embedding is
the largest), so the 0.54 GB of gradients never coexist.

The update is the optimizer's own: the hook narrows the parameter's group to that one
parameter and calls `optimizer.step()`, so the state (moments, step counts), the learning
rate set by the scheduler and checkpoints are exactly those of the ordinary step. A hook of
the autograd engine runs once per backward pass, after all contributions to the parameter
(the tied embedding receives two) have been summed.

What it cannot do, by construction (the config rejects these combinations):
  - global-norm clipping (needs every gradient before the first update): max_grad_norm 0;
  - gradient accumulation (the update would come after the first micro-batch): grad_accum 1.
A non-finite gradient leaves its own parameter unchanged, but parameters already updated in
the same backward pass stay updated: the step is reported as skipped.
"""

from __future__ import annotations

import math

import torch


class BackwardStepper:
    """Registers the hooks on the optimizer's parameters; they act only while `active`."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self._group = {p: g for g in optimizer.param_groups for p in g["params"]}
        if len(optimizer.param_groups) != 1:
            # step() walks every group; with one group narrowed to one parameter nothing else moves.
            raise ValueError("optimizer in backward needs an optimizer with a single parameter group")
        for p in self._group:  # they live as long as the parameters: a Trainer never switches them off
            p.register_post_accumulate_grad_hook(self._on_grad)
        self.active = False
        self._sq_norm: list[torch.Tensor] = []
        self.nonfinite = 0

    def begin(self) -> None:
        """Arm the hooks for the next backward pass (the training step's)."""
        self.active, self._sq_norm, self.nonfinite = True, [], 0

    def end(self) -> float:
        """Disarm; returns the global gradient norm of the pass (before the updates)."""
        self.active = False
        if not self._sq_norm:
            return 0.0
        return math.sqrt(float(torch.stack(self._sq_norm).sum()))

    @property
    def all_finite(self) -> bool:
        return self.nonfinite == 0

    def _on_grad(self, param: torch.Tensor) -> None:
        if not self.active:
            return
        sq = torch.linalg.vector_norm(param.grad.detach(), dtype=torch.float32).square()  # no temporary copy
        self._sq_norm.append(sq)
        if torch.isfinite(sq):
            group = self._group[param]
            everyone = group["params"]
            group["params"] = [param]
            try:
                self.optimizer.step()
            finally:
                group["params"] = everyone
        else:
            self.nonfinite += 1
        param.grad = None  # the point of it all: this gradient's memory goes back now
