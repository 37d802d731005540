"""Exponential moving average of the tokenizer weights, stored the way the official checkpoints store it.

Buffers: `decay`, `num_updates` and one shadow per parameter named without dots (`encoder.conv_in.weight` ->
`encoderconv_inweight`), so a training checkpoint's `model_ema.*` keys are those of the official release and
`load_checkpoint` takes them as the tokenizer's weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class EMA(nn.Module):
    """Shadow copies of `model`'s parameters, updated as s <- d * s + (1 - d) * p.

    warmup: decay min(decay, (1 + n) / (10 + n)) after n updates (LitEma's use_num_upates; official training: off).
    """

    def __init__(self, model: nn.Module, *, decay: float = 0.999, warmup: bool = False) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA: decay must be in [0, 1), got {decay!r}")
        self.register_buffer("decay", torch.tensor(decay, dtype=torch.float32))
        self.register_buffer("num_updates", torch.tensor(0 if warmup else -1, dtype=torch.int64))
        self.names: dict[str, str] = {}  # parameter name -> shadow buffer name
        for name, p in model.named_parameters():
            if p.requires_grad:
                flat = name.replace(".", "")
                if flat in self.names.values():
                    raise ValueError(f"EMA: parameter names collide without dots: {name}")
                self.names[name] = flat
                self.register_buffer(flat, p.detach().clone())

    def _params(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        params = dict(model.named_parameters())
        missing = [n for n in self.names if n not in params]
        if missing:
            raise ValueError(f"EMA: the model lacks parameters {missing[:5]}")
        return [params[n].detach() for n in self.names], [getattr(self, f) for f in self.names.values()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = float(self.decay)
        if int(self.num_updates) >= 0:
            self.num_updates += 1
            n = int(self.num_updates)
            decay = min(decay, (1 + n) / (10 + n))
        params, shadows = self._params(model)
        torch._foreach_lerp_(shadows, params, 1.0 - decay)  # one fused pass over all tensors

    @torch.no_grad()
    def load_shadows(self, weights: dict[str, torch.Tensor]) -> None:
        """Set the shadows from `weights` keyed by parameter name (e.g. inflated EMA weights); every shadow must
        be there with its shape."""
        missing = [n for n in self.names if n not in weights]
        if missing:
            raise ValueError(f"EMA: no weights for {missing[:5]}")
        for name, flat in self.names.items():
            shadow = getattr(self, flat)
            if tuple(weights[name].shape) != tuple(shadow.shape):
                raise ValueError(
                    f"EMA: {name} has shape {tuple(weights[name].shape)}, the shadow {tuple(shadow.shape)}"
                )
            shadow.copy_(weights[name])

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        params, shadows = self._params(model)
        torch._foreach_copy_(params, shadows)

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[None]:
        """Run `model` with the EMA weights inside the block; its own weights come back afterwards."""
        params, shadows = self._params(model)
        saved = [p.clone() for p in params]
        with torch.no_grad():
            torch._foreach_copy_(params, shadows)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, saved)
