"""Non-finite losses: skip the update, count, abort after too many in a row.

Every rank must take the same decision or DDP deadlocks (one rank in backward's all-reduce, the other not), so the
"is anything non-finite" flag is max-reduced across ranks before any backward.
"""

from __future__ import annotations

import torch
from lightning.pytorch.utilities import rank_zero_warn


class NonFiniteLossError(RuntimeError):
    pass


class NonFiniteGuard:
    """`skip(module, *losses)` is True when any loss is NaN/inf on any rank; raises NonFiniteLossError after
    `limit` consecutive skips (0: the first non-finite loss raises)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.consecutive, self.total = limit, 0, 0

    def skip(self, module, *losses: torch.Tensor, step: int) -> bool:
        bad = torch.stack([~torch.isfinite(loss.detach()).all() for loss in losses]).any().float()
        if module._trainer is not None:
            bad = module.trainer.strategy.reduce(bad, reduce_op="max")
        if not bool(bad):
            self.consecutive = 0
            return False
        self.consecutive += 1
        self.total += 1
        values = ", ".join(f"{float(loss.detach().float().mean()):g}" for loss in losses)
        if self.consecutive > self.limit:
            raise NonFiniteLossError(
                f"non-finite loss ({values}) at step {step}: {self.consecutive} in a row, more than "
                f"trainer.max_nonfinite_skips={self.limit}; stopping (the last checkpoint holds finite weights)"
            )
        rank_zero_warn(f"non-finite loss ({values}) at step {step}: update skipped ({self.consecutive} in a row)")
        return True
