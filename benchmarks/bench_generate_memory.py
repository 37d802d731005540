"""Memory and time to first token of `generate`, which reads the model's weights where they are (no decode copy):
peak resident memory above the loaded model and time to the first token of a first and a second call on the same
model, in a fresh process (memory figures need one: the high-water mark is per process). Full size
(MAGVIT2_BENCH_FULL=1): the AR-B preset (343.6M parameters, 1,311 MiB), 2 images x 4 tokens with guidance; smoke: a
dim-256 model with 4 + 1 layers.

    python benchmarks/bench_generate_memory.py B|small      # prints one JSON line

What is above the model: the KV caches (2 x layers x rows x heads x tokens x head_dim floats: 0.4 MiB here), the
step's scratch and activations (a few MiB), torch's allocator slack.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from memory import status_kib

MIB = 2**20


def main(size: str) -> dict:
    import torch

    from magvit2.nn.ar.generation import generate
    from magvit2.nn.ar.transformer import ARConfig, ARTransformer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    generate(ARTransformer.from_preset("tiny"), torch.tensor([1]), num_tokens=2)  # op registration, thread pools
    if size == "B":
        model = ARTransformer.from_preset("open-magvit2-ar-B").eval()
    else:
        model = ARTransformer(ARConfig(dim=256, n_head=4, spatial_n_layer=4, factorized_n_layer=1)).eval()
    for head in model.head:
        torch.nn.init.normal_(head.weight, 0.0, 0.2)
    weight_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / MIB
    classes = torch.tensor([3, 7])
    settings = dict(cfg=(1.9, 2.0), top_p=(0.96, 0.96), seed=1)
    base = status_kib("VmRSS")  # the loaded model

    def call(tokens: int):
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
        start = time.perf_counter()
        out = generate(model, classes, num_tokens=tokens, **settings)
        return out, time.perf_counter() - start, (status_kib("VmHWM") - base) / 1024

    _, ttft_first, _ = call(1)  # one token position
    _, ttft_second, _ = call(1)
    later = sorted([ttft_second] + [call(1)[1] for _ in range(4)])  # calls 2-6: the same work as the first
    first, _, peak_first = call(4)
    held = (status_kib("VmRSS") - base) / 1024  # kept between calls
    second, _, peak_second = call(4)
    assert torch.equal(first.pre, second.pre) and torch.equal(first.post, second.post)
    return dict(
        size=size,
        weight_mib=weight_mib,
        peak_first_mib=peak_first,
        peak_second_mib=peak_second,
        held_mib=held,
        ttft_first_s=ttft_first,
        ttft_second_s=ttft_second,
        ttft_later_median_s=later[2],
    )


def run(size: str) -> dict:
    """`main` in a fresh interpreter."""
    out = subprocess.run([sys.executable, __file__, size], capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


def test_generate_memory_and_first_token(ratio):
    from conftest import FULL

    r = run("B" if FULL else "small")
    name = f"generate 2 img x 4 tok, AR-{r['size']}, 1 thr"
    ratio(name, "time to first token: first / second call", r["ttft_first_s"] / r["ttft_second_s"], ">= 1")
    later = r["ttft_later_median_s"]
    ratio(name, "time to first token: first / median of calls 2-6", r["ttft_first_s"] / later, ">= 1")
    ratio(name, "peak above model, first call / weights", r["peak_first_mib"] / r["weight_mib"], "<= 0.25 (issue)")
    ratio(name, "peak above model, second call / weights", r["peak_second_mib"] / r["weight_mib"], "<= 0.25 (issue)")
    keys = ("weight_mib", "peak_first_mib", "peak_second_mib", "held_mib", "ttft_first_s", "ttft_second_s")
    for key in keys + ("ttft_later_median_s",):
        ratio(name, f"{key} (context)", r[key])


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
