"""Tokenizer training losses of the official recipe (reference §3.1-3.2), usable without Lightning.

Generator:      L_G = |x - x'| + w_p * LPIPS(x, x') + w_g * g + s(step) * entropy_aux + w_c * commitment
                g = mean_b softplus(-mean_hw D(x'))        (non-saturating, logits averaged per sample first)
                w_g = 0.1 fixed (official), or the VQGAN adaptive weight when `gen_loss_weight` is None
Discriminator:  L_D = 0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x')))  +  w_lecam * LeCAM
                LeCAM = mean relu(D(x) - ema_fake)^2 + mean relu(ema_real - D(x'))^2, EMAs (decay 0.999) of the
                mean logits, updated before the term is taken.
The LeCAM EMAs are buffers here (the official keeps Python floats), so a resumed run continues them exactly.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from magvit2.nn.quantizer import LFQ, LFQOutput


def frames_as_images(x: torch.Tensor) -> torch.Tensor:
    """Clips (B, C, T, H, W) -> their frames (B * T, C, H, W), clip-major (the official `flatten_t_dim`); images
    (B, C, H, W) as they are."""
    return x.movedim(2, 1).flatten(0, 1) if x.dim() == 5 else x


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x')))."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean softplus(-D(x)) + mean softplus(D(x')))."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def non_saturating_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """mean over the batch of softplus(-mean over space of D(x')): (B, 1, h, w) -> scalar."""
    return F.softplus(-logits_fake.float().flatten(1).mean(dim=1)).mean()


def adaptive_generator_weight(
    nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, *, disc_weight: float = 0.8
) -> torch.Tensor:
    """VQGAN adaptive weight ||d nll / d W|| / (||d g / d W|| + 1e-4), clamped to [0, 1e4], times `disc_weight`,
    with W the decoder's last layer weight. Detached; keeps the graph for the backward that follows."""
    (g_nll,) = torch.autograd.grad(nll, last_layer, retain_graph=True)
    (g_gan,) = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    weight = g_nll.norm() / (g_gan.norm() + 1e-4)
    return weight.clamp(0.0, 1e4).detach() * disc_weight


def entropy_weight_scale(step: int, *, enlarge_ratio: float, enlarge_steps: int) -> float:
    """Official codebook-entropy warm-up factor: 1 + ratio * max(0, 1 - step / steps) (1 when ratio is 0)."""
    if enlarge_ratio == 0:
        return 1.0
    return 1.0 + enlarge_ratio * max(0.0, 1.0 - step / max(enlarge_steps, 1))


class LeCAM(nn.Module):
    """LeCAM regulariser with EMAs of the mean real/fake logits (buffers, so checkpoints carry them).

    Example:
        >>> reg = LeCAM(decay=0.999)
        >>> round(reg(torch.ones(4, 1, 2, 2), -torch.ones(4, 1, 2, 2)).item(), 6)  # EMAs: +0.001 / -0.001
        2.004002
    """

    def __init__(self, *, decay: float = 0.999, init: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"LeCAM: decay must be in [0, 1), got {decay!r}")
        self.decay = decay
        self.register_buffer("ema_real", torch.tensor(float(init), dtype=torch.float64))
        self.register_buffer("ema_fake", torch.tensor(float(init), dtype=torch.float64))

    @torch.no_grad()
    def update(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> None:
        self.ema_real.mul_(self.decay).add_(logits_real.detach().double().mean(), alpha=1 - self.decay)
        self.ema_fake.mul_(self.decay).add_(logits_fake.detach().double().mean(), alpha=1 - self.decay)

    def forward(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
        """Update the EMAs, then mean relu(D(x) - ema_fake)^2 + mean relu(ema_real - D(x'))^2."""
        self.update(logits_real, logits_fake)
        real, fake = logits_real.float(), logits_fake.float()
        return (
            F.relu(real - self.ema_fake.float()).square().mean() + F.relu(self.ema_real.float() - fake).square().mean()
        )


@dataclasses.dataclass
class LossConfig:
    """Loss settings; defaults are the official ImageNet 256-L recipe (reference §3.1-3.3)."""

    perceptual_weight: float = 1.0
    lpips_backbone: str | None = None  # torchvision VGG16 weights file; None: see lpips_random
    lpips_heads: str | None = "auto"  # LPIPS head file, "auto" = the copy shipped in torchmetrics/lpips
    lpips_random: bool = False  # without a backbone file: True = random VGG16 on purpose, False = LPIPS disabled
    gen_loss_weight: float | None = 0.1  # None: VQGAN adaptive weight times disc_weight
    disc_weight: float = 0.8
    disc_start: int = 0  # global step from which the GAN terms are on
    disc_loss: str = "hinge"  # or "vanilla"
    disc_ndf: int = 64
    disc_layers: int = 3
    lecam_weight: float = 0.05  # 0.01 in the 128-L recipe
    lecam_decay: float = 0.999
    entropy_enlarge_ratio: float = 0.0  # official codebook_enlarge_ratio (0: no warm-up)
    entropy_enlarge_steps: int = 2000

    def __post_init__(self) -> None:
        if self.disc_loss not in ("hinge", "vanilla"):
            raise ValueError(f"loss.disc_loss must be 'hinge' or 'vanilla', got {self.disc_loss!r}")
        for name in ("perceptual_weight", "disc_weight", "lecam_weight", "entropy_enlarge_ratio"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0 or not math.isfinite(value):
                raise ValueError(f"loss.{name} must be a finite number >= 0, got {value!r}")
        if self.gen_loss_weight is not None and (self.gen_loss_weight < 0 or not math.isfinite(self.gen_loss_weight)):
            raise ValueError(f"loss.gen_loss_weight must be >= 0 or null (adaptive), got {self.gen_loss_weight!r}")
        for name, least in (("disc_start", 0), ("disc_ndf", 1), ("disc_layers", 1), ("entropy_enlarge_steps", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"loss.{name} must be an int >= {least}, got {value!r}")
        if not (isinstance(self.lecam_decay, (int, float)) and 0 <= self.lecam_decay < 1):
            raise ValueError(f"loss.lecam_decay must be in [0, 1), got {self.lecam_decay!r}")


class LossTerms(NamedTuple):
    loss: torch.Tensor  # total, scalar
    logs: dict[str, torch.Tensor]  # detached terms


class TokenizerLoss(nn.Module):
    """Generator and discriminator objectives around a given discriminator (images -> (B, 1, h, w) logits: the image
    tokenizer's `PatchDiscriminator(ndf=config.disc_ndf, n_layers=config.disc_layers)`, or a video one). Attribute
    names give the official keys `discriminator.main.*` and `perceptual_loss.*` (under `loss.` in a training
    checkpoint)."""

    def __init__(self, config: LossConfig | None = None, *, discriminator: nn.Module) -> None:
        super().__init__()
        self.config = c = config or LossConfig()
        if not isinstance(discriminator, nn.Module):
            raise TypeError(f"TokenizerLoss: discriminator must be an nn.Module, got {type(discriminator).__name__}")
        self.discriminator = discriminator
        self.lecam = LeCAM(decay=c.lecam_decay)
        self.perceptual_loss = None
        if c.perceptual_weight > 0:
            if c.lpips_backbone is None and not c.lpips_random:
                import warnings

                warnings.warn(
                    "LPIPS disabled: no VGG16 weights file (loss.lpips_backbone); set it to a torchvision "
                    "vgg16 .pth, or loss.lpips_random=true for a random VGG16 on purpose",
                    stacklevel=2,
                )
            else:
                from magvit2.nn.lpips import LPIPS

                self.perceptual_loss = LPIPS(
                    backbone=c.lpips_backbone, heads=c.lpips_heads, random_backbone=c.lpips_random
                )

    def _gan_on(self, step: int) -> bool:
        return step >= self.config.disc_start

    def generator_loss(
        self,
        x: torch.Tensor,
        rec: torch.Tensor,
        lfq: LFQOutput,
        quantizer: LFQ,
        *,
        step: int,
        last_layer: torch.Tensor | None = None,
    ) -> LossTerms:
        """L_G for images x and reconstructions rec (B, 3, H, W), or clips (B, 3, T, H, W): L1 over every pixel, LPIPS
        over frames, the discriminator on whole clips (the official video loss). `lfq` (the quantizer's output)
        carries the entropy and commitment terms, weighted with the `quantizer`'s weights and the entropy warm-up
        factor."""
        c = self.config
        rec = rec.float()
        l1 = (x.float() - rec).abs().mean()
        nll = l1
        logs = {"l1": l1}
        if self.perceptual_loss is not None:  # clips (B, C, T, H, W): over their frames, as a batch of images
            p = self.perceptual_loss(frames_as_images(x.float()), frames_as_images(rec)).mean()
            nll = nll + c.perceptual_weight * p
            logs["lpips"] = p
        q = quantizer
        entropy_aux = q.sample_minimization_weight * lfq.per_sample_entropy
        entropy_aux = entropy_aux - q.batch_maximization_weight * lfq.codebook_entropy
        scale = entropy_weight_scale(step, enlarge_ratio=c.entropy_enlarge_ratio, enlarge_steps=c.entropy_enlarge_steps)
        total = nll + scale * q.entropy_weight * entropy_aux + q.commitment_weight * lfq.commitment
        if self._gan_on(step):
            g = non_saturating_g_loss(self.discriminator(rec))
            if c.gen_loss_weight is None:
                if last_layer is None:
                    raise ValueError(
                        "TokenizerLoss: the adaptive GAN weight needs last_layer (decoder.conv_out.weight)"
                    )
                w = adaptive_generator_weight(nll, g, last_layer, disc_weight=c.disc_weight)
            else:
                w = torch.tensor(c.gen_loss_weight, device=x.device)
            total = total + w * g
            logs.update(g=g, g_weight=w)
        logs.update(
            nll=nll,
            entropy_aux=entropy_aux,
            per_sample_entropy=lfq.per_sample_entropy,
            codebook_entropy=lfq.codebook_entropy,
            commitment=lfq.commitment,
            total=total,
        )
        return LossTerms(total, {k: v.detach().float() for k, v in logs.items()})

    def discriminator_loss(self, x: torch.Tensor, rec: torch.Tensor, *, step: int) -> LossTerms:
        """L_D on real x and detached reconstructions; zero (with no D call) before `disc_start`."""
        c = self.config
        if not self._gan_on(step):
            zero = x.new_zeros((), dtype=torch.float32)
            return LossTerms(zero, {"d_loss": zero})
        logits_real = self.discriminator(x.detach())  # two calls: BatchNorm statistics per batch, as the official
        logits_fake = self.discriminator(rec.detach())
        adv = (hinge_d_loss if c.disc_loss == "hinge" else vanilla_d_loss)(logits_real.float(), logits_fake.float())
        total = adv
        logs = {"d_adv": adv, "logits_real": logits_real.float().mean(), "logits_fake": logits_fake.float().mean()}
        if c.lecam_weight > 0:
            reg = self.lecam(logits_real, logits_fake)
            total = total + c.lecam_weight * reg
            logs["lecam"] = reg
        logs["d_loss"] = total
        return LossTerms(total, {k: v.detach().float() for k, v in logs.items()})
