"""Codebook usage: streaming per-code counts, utilisation, perplexity, and a PNG of the usage distribution.

The official evaluation reports utilisation = #distinct indices over the validation set / 2^18 (reference/
open-magvit2.md §3.6), counted with a Python dict loop over `index.item()`; a bincount gives the same number at
tensor speed and keeps the whole histogram for perplexity and the plot.

Example:
    >>> counter = CodebookCounter(2**18)
    >>> counter.update(torch.tensor([[0, 5], [5, 7]]))
    >>> counter.used, counter.utilization
    (3, 1.1444091796875e-05)
"""

from __future__ import annotations

import math
import os

import torch


class CodebookCounter:
    """Counts of every code index, int64 (codebook_size,), accumulated over `update` calls.

    Counts live on the device of the first update (a 2^18 int64 histogram is 2 MiB); combine processes by
    sum-reducing `counts`.
    """

    def __init__(self, codebook_size: int) -> None:
        if int(codebook_size) < 1:
            raise ValueError(f"CodebookCounter: codebook_size must be positive, got {codebook_size}")
        self.codebook_size = int(codebook_size)
        self.counts = torch.zeros(self.codebook_size, dtype=torch.int64)

    def update(self, indices: torch.Tensor) -> None:
        """Add indices of any shape (e.g. (B, h, w)), integer values in [0, codebook_size)."""
        if not isinstance(indices, torch.Tensor) or indices.is_floating_point() or indices.is_complex():
            raise TypeError(f"CodebookCounter.update: indices must be an integer tensor, got {_describe(indices)}")
        if indices.dtype == torch.bool:
            raise TypeError("CodebookCounter.update: indices must be an integer tensor, got torch.bool")
        if indices.numel() == 0:
            return
        flat = indices.detach().flatten().long()
        lo, hi = (v.item() for v in torch.aminmax(flat))
        if lo < 0 or hi >= self.codebook_size:
            raise ValueError(
                f"CodebookCounter.update: indices must lie in [0, {self.codebook_size}), got values in [{lo}, {hi}]"
            )
        if self.counts.device != flat.device:
            self.counts = self.counts.to(flat.device)
        self.counts += torch.bincount(flat, minlength=self.codebook_size)

    @property
    def total(self) -> int:
        """Number of indices counted."""
        return int(self.counts.sum())

    @property
    def used(self) -> int:
        """Number of distinct codes seen at least once."""
        return int((self.counts > 0).sum())

    @property
    def utilization(self) -> float:
        """used / codebook_size, in [0, 1] (the official "codebook usage")."""
        return self.used / self.codebook_size

    @property
    def perplexity(self) -> float:
        """exp(entropy) of the empirical code distribution: the number of equally used codes that would give the
        same entropy (codebook_size when usage is uniform, 1 when one code takes everything; 0 before any update)."""
        return usage_perplexity(self.counts)


def usage_perplexity(counts: torch.Tensor) -> float:
    """exp(-sum p log p) with p = counts / counts.sum() (0 log 0 = 0); 0.0 for an empty histogram."""
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0].double() / total
    return math.exp(float(-(p * p.log()).sum()))


def save_usage_histogram(counts: torch.Tensor, path: str | os.PathLike, *, width: int = 900, height: int = 420) -> None:
    """Write a PNG of the rank-frequency curve: code counts sorted in decreasing order against their rank.

    Why this plot: with 2^18 codes a bar per code is unreadable, and the questions an evaluation asks are "how many
    codes are never used" and "how skewed is the usage". Sorted counts answer both at once: the curve hits the baseline
    at rank = used codes (marked), and its slope shows the skew. The y axis is log10(1 + count) because counts of
    trained tokenizers span several decades (a few hot codes vs. a long tail seen once or twice). Each pixel column
    covers a range of ranks and is drawn from that range's smallest to largest count, so no code is hidden.
    """
    from PIL import Image, ImageDraw, ImageFont

    counts = torch.as_tensor(counts).detach().flatten().cpu().long()
    if counts.numel() == 0:
        raise ValueError("save_usage_histogram: counts is empty")
    n = counts.numel()
    ranked = counts.sort(descending=True).values.double()
    used = int((ranked > 0).sum())
    ylog = torch.log10(1 + ranked)
    ymax = max(float(ylog[0]), 1.0)

    left, right, top, bottom = 70, 20, 40, 50
    pw, ph = width - left - right, height - top - bottom
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()

    def y_of(v: float) -> int:
        return top + ph - round(v / ymax * ph)

    # one column per pixel: ranks [edges[c], edges[c+1]) -> vertical segment from min to max count
    edges = torch.linspace(0, n, pw + 1).round().long()
    for c in range(pw):
        lo, hi = int(edges[c]), max(int(edges[c + 1]), int(edges[c]) + 1)
        seg = ylog[lo : min(hi, n)]
        if seg.numel() == 0:
            continue
        x = left + c
        draw.line([(x, y_of(float(seg.min()))), (x, y_of(float(seg.max())))], fill=(40, 90, 180))

    # axes, ticks at powers of ten and at quarters of the codebook
    draw.line([(left, top), (left, top + ph), (left + pw, top + ph)], fill="black")
    for k in range(int(math.floor(ymax)) + 1):
        y = y_of(math.log10(1 + 10**k) if k else 0.0)
        draw.line([(left - 4, y), (left, y)], fill="black")
        draw.text((left - 8, y), "0" if k == 0 else f"1e{k}", fill="black", font=font, anchor="rm")
    for q in range(5):
        x = left + round(q / 4 * pw)
        draw.line([(x, top + ph), (x, top + ph + 4)], fill="black")
        draw.text((x, top + ph + 6), f"{round(q / 4 * n)}", fill="black", font=font, anchor="mt")
    if 0 < used < n:  # where the unused codes begin
        x = left + round(used / n * pw)
        for y in range(top, top + ph, 6):
            draw.line([(x, y), (x, y + 3)], fill=(200, 40, 40))
    draw.text((left + pw // 2, height - 14), "code rank (sorted by count)", fill="black", font=font, anchor="mm")
    title = (
        f"codebook usage: {used}/{n} codes used ({100 * used / n:.2f}%), perplexity {usage_perplexity(counts):.1f}, "
        f"{int(counts.sum())} tokens; y = count (log scale)"
    )
    draw.text((left, top // 2), title, fill="black", font=font, anchor="lm")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path, format="PNG")


def _describe(x) -> str:
    return f"{x.dtype} tensor" if isinstance(x, torch.Tensor) else type(x).__name__
