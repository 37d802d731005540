"""Non-finite losses and gradients: skip the update, count, abort after too many in a row; and no checkpoint of
non-finite weights.

Every rank must take the same decision or DDP deadlocks (one rank in backward's all-reduce, the other not), so each
"is anything non-finite" flag is max-reduced across ranks before it is acted on. A finite loss can still give
infinite gradients (an overflow in backward): those are checked after backward, before the optimizer steps, unless
an fp16 GradScaler runs (it skips such steps itself and shrinks its scale: the same decision on every rank, as the
gradients are all-reduced before it looks).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn

from magvit2.nn.checks import first_non_finite

STOP = "stopping (checkpoints hold finite weights only: each is checked before it is written)"


class NonFiniteLossError(RuntimeError):
    pass


def grad_scaler(module) -> Any:
    """The fp16 GradScaler of the module's trainer, or None (fp32, bf16, no trainer)."""
    trainer = getattr(module, "_trainer", None)
    return getattr(trainer.precision_plugin, "scaler", None) if trainer is not None else None


def _any_rank(module, bad: torch.Tensor) -> bool:
    if module._trainer is not None:
        bad = module.trainer.strategy.reduce(bad, reduce_op="max")
    return bool(bad)


class NonFiniteGuard:
    """`skip(module, *losses)` is True when any loss is NaN/inf on any rank; `skip_grads(module, params)` when any
    gradient is; raises NonFiniteLossError after `limit` consecutive skips (0: the first one raises). A step that
    passes both checks (or the loss check under a GradScaler) ends a run of skips."""

    def __init__(self, limit: int) -> None:
        self.limit, self.consecutive, self.total = limit, 0, 0

    def _count(self, what: str, step: int) -> None:
        self.consecutive += 1
        self.total += 1
        if self.consecutive > self.limit:
            raise NonFiniteLossError(
                f"{what} at step {step}: {self.consecutive} in a row, more than trainer.max_nonfinite_skips="
                f"{self.limit}; {STOP}"
            )
        rank_zero_warn(f"{what} at step {step}: update skipped ({self.consecutive} in a row)")

    def skip(self, module, *losses: torch.Tensor, step: int) -> bool:
        bad = torch.stack([~torch.isfinite(loss.detach()).all() for loss in losses]).any().float()
        if not _any_rank(module, bad):
            if grad_scaler(module) is not None:  # no gradient check follows (the scaler's)
                self.consecutive = 0
            return False
        values = ", ".join(f"{float(loss.detach().float().mean()):g}" for loss in losses)
        self._count(f"non-finite loss ({values})", step)
        return True

    def skip_grads(self, module, params: Iterable[torch.nn.Parameter], *, step: int) -> bool:
        """True (the update is to be skipped) when a gradient of `params` is NaN/inf on any rank; always False under
        a GradScaler, which handles those steps itself."""
        if grad_scaler(module) is not None:
            return False
        grads = [p.grad.detach() for p in params if p.grad is not None]
        bad = torch.zeros((), device=module.device)
        if grads:
            bad = torch.stack([~torch.isfinite(g).all() for g in grads]).any().float()
        if not _any_rank(module, bad):
            self.consecutive = 0
            return False
        self._count("non-finite gradient (finite loss)", step)
        return True


def check_finite_checkpoint(checkpoint: dict[str, Any], step: int) -> None:
    """Refuse (NonFiniteLossError, nothing written) a checkpoint whose weights, buffers or optimizer states hold a
    NaN/inf: resuming from it could only go on with non-finite weights."""
    optimizer_items = (
        (f"optimizer {i} state {k}.{m}", v)
        for i, opt in enumerate(checkpoint.get("optimizer_states", []))
        for k, s in opt.get("state", {}).items()
        for m, v in s.items()
    )
    found = first_non_finite(itertools.chain(checkpoint.get("state_dict", {}).items(), optimizer_items))
    if found is not None:
        name = found[0]
        raise NonFiniteLossError(f"non-finite values in {name} at step {step}: checkpoint not written; stopping")
