"""One tokenizer training step (generator update, then discriminator update), timed and memory-profiled in a fresh
process. The entropy penalty comes from our kernel ("ours") or from the official naive formula ("naive", which
materialises N x 2^18 tensors) swapped in for this benchmark only.

    python benchmarks/train_step.py ours|naive PRESET BATCH SIZE STEPS

Prints `IMAGES_PER_S <float>`, `PEAK_MIB <float>` (resident high-water mark above the post-warm-up baseline) and
`LOSS <float>` (the last generator loss, to check both variants compute the same thing).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _naive_lfq_forward(self, z):
    """LFQ.forward with the entropy terms from the naive official formula (N x 2^K probabilities)."""
    from magvit2.nn.quantizer import LFQOutput
    from magvit2.ops import reference

    quantized, indices, tokens, codes = self._quantize(z)
    commitment = (tokens - codes).float().square().mean()
    per_sample, codebook = reference.lfq_entropy_naive(tokens, self.inv_temperature, self.log_eps)
    entropy = self.sample_minimization_weight * per_sample - self.batch_maximization_weight * codebook
    loss = self.entropy_weight * entropy + self.commitment_weight * commitment
    return LFQOutput(quantized, indices, loss, per_sample, codebook, commitment)


def build(kind: str, preset: str):
    from magvit2.nn import LFQ
    from magvit2.train.tokenizer.config import load_config
    from magvit2.train.tokenizer.module import TokenizerModule

    if kind == "naive":
        LFQ.forward = _naive_lfq_forward
    elif kind != "ours":
        raise ValueError(f"kind must be ours or naive, got {kind!r}")
    torch.manual_seed(0)
    module = TokenizerModule(load_config(preset, ["loss.disc_start=0", "loss.perceptual_weight=0"]))
    tok = module.tokenizer.train()
    opt_g = torch.optim.Adam(tok.parameters(), lr=1e-4, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(module.loss.discriminator.parameters(), lr=1e-4, betas=(0.5, 0.9))

    def step(x: torch.Tensor) -> float:  # the body of TokenizerModule.training_step without Lightning
        module.loss.discriminator.requires_grad_(False)
        rec, lfq = tok(x)
        g = module.loss.generator_loss(x, rec, lfq, module.quantize, step=1, last_layer=module.decoder.conv_out.weight)
        opt_g.zero_grad(set_to_none=True)
        g.loss.backward()
        opt_g.step()
        module.loss.discriminator.requires_grad_(True)
        d = module.loss.discriminator_loss(x, rec.detach(), step=1)
        opt_d.zero_grad(set_to_none=True)
        d.loss.backward()
        opt_d.step()
        module.model_ema.update(tok)
        return float(g.loss)

    return step


def main(kind: str, preset: str, batch: int, size: int, steps: int) -> tuple[float, float, float]:
    step = build(kind, preset)
    x = torch.rand(batch, 3, size, size) * 2 - 1
    step(x)  # warm-up: allocator, thread pools, Adam state
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_kib("VmRSS")
    start = time.perf_counter()
    for _ in range(steps):
        loss = step(x)
    seconds = time.perf_counter() - start
    return batch * steps / seconds, (_status_kib("VmHWM") - base) / 1024, loss


if __name__ == "__main__":
    ips, peak, loss = main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:6]))
    print(f"IMAGES_PER_S {ips:.4f}\nPEAK_MIB {peak:.2f}\nLOSS {loss:.6f}")
