"""Tokenizer encode + decode throughput (images/s): eager vs torch.compile vs channels_last (and both), inference.

Smoke (default): a 2-level model, batch 2 at 32 x 32. MAGVIT2_BENCH_FULL=1: open-magvit2-256-L, batch 4 at
256 x 256 (2.3 TFLOP per call; minutes on a 2-core CPU). Every variant is checked against eager: encoder
latents and the decoder output for the same codes must agree. Ratios are interleaved in one test (conftest) and a
table is printed; peak memory is the resident high-water mark one call adds above the process baseline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from conftest import FULL, interleaved

from magvit2 import Tokenizer, TokenizerConfig

PRESET, BATCH, SIZE, ROUNDS = ("open-magvit2-256-L", 4, 256, 3) if FULL else ("smoke", 2, 32, 2)
# smoke: two levels, one block each -- the smallest graph that has every block kind, so compiling stays short
SMOKE = TokenizerConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1)
# smoke skips compile+channels_last: on 2 cores each inductor compile costs 20-40 s whatever the model size
VARIANTS = ["eager", "channels_last", "compile"] + (["compile+channels_last"] if FULL else [])


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def peak_mib(fn) -> float:
    """Resident high-water mark that one call adds above the current resident size (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return float("nan")
    base = _rss_kib("VmRSS")
    fn()
    return (_rss_kib("VmHWM") - base) / 1024


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = (Tokenizer.from_preset(PRESET) if FULL else Tokenizer(SMOKE)).eval()
    x = torch.rand(BATCH, 3, SIZE, SIZE) * 2 - 1
    return model, x


class Variant(NamedTuple):
    encoder: Callable[[torch.Tensor], torch.Tensor]
    quantizer: torch.nn.Module
    decoder: Callable[[torch.Tensor], torch.Tensor]
    memory_format: torch.memory_format

    def roundtrip(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.quantizer.quantize(self.encoder(x))[0])


def build(variant: str, model: Tokenizer) -> Variant:
    """A copy of the model (the eager one stays untouched) in the variant's memory format, compiled or not."""
    m = Tokenizer(model.config).eval()
    m.load_state_dict(model.state_dict())
    fmt = torch.channels_last if "channels_last" in variant else torch.contiguous_format
    m = m.to(memory_format=fmt)
    encoder, decoder = m.encoder, m.decoder
    if "compile" in variant:
        encoder, decoder = torch.compile(m.encoder), torch.compile(m.decoder)
    return Variant(encoder, m.quantizer, decoder, fmt)


@torch.inference_mode()
def test_tokenizer_throughput(setup, ratio, capsys):
    model, x = setup
    variants = {name: build(name, model) for name in VARIANTS}
    want_z = model.encoder(x)
    want_codes, want_idx = model.quantizer.quantize(want_z)
    want_rec = model.decoder(want_codes)
    inputs, first_call = {}, {}
    for name, v in variants.items():
        inp = inputs[name] = x.contiguous(memory_format=v.memory_format)
        start = time.perf_counter()
        z = v.encoder(inp)  # the first calls compile
        rec = v.decoder(want_codes.contiguous(memory_format=v.memory_format))
        first_call[name] = time.perf_counter() - start
        torch.testing.assert_close(z, want_z, rtol=1e-3, atol=1e-3 * want_z.abs().max().item())
        agree = (v.quantizer.quantize(z)[1] == want_idx).float().mean().item()
        assert agree > 0.99, f"{name}: only {agree:.4f} of the indices equal eager's"
        torch.testing.assert_close(rec, want_rec, rtol=1e-3, atol=1e-3 * want_rec.abs().max().item())

    fns = {name: (lambda v=v, inp=inputs[name]: v.roundtrip(inp)) for name, v in variants.items()}
    times = interleaved(fns, ROUNDS, warmup=1)
    memory = {name: peak_mib(fn) for name, fn in fns.items()}

    bench = f"tokenizer {PRESET} B={BATCH} {SIZE}px enc+dec"
    for name in VARIANTS[1:]:
        ratio(bench, f"{name} / eager (throughput)", times["eager"] / times[name], "> 1 is faster")
    ratio(bench, "eager images/s (context)", BATCH / times["eager"])
    rows = [
        f"{name:<22} {BATCH / times[name]:>9.3f} img/s  {times[name] * 1e3:>10.1f} ms/call  "
        f"x{times['eager'] / times[name]:>5.2f} vs eager  first call {first_call[name]:>7.1f} s  "
        f"peak +{memory[name]:>7.0f} MiB"
        for name in VARIANTS
    ]
    with capsys.disabled():
        print(f"\n{bench}, {torch.get_num_threads()} threads, median of {ROUNDS}:")
        print("\n".join(rows))
