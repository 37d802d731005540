"""Class-conditional generation of 16 x 16 token grids with classifier-free guidance: `generate` vs the official
sampler's loop (official_generation.py) on the same weights, as tokens/s of 8 images (8 conditional + 8 null-class
rows). Model: dim 256, 4 heads, 4 spatial + 1 intra layers; visualisation settings (cfg 4.0, top-p 0.96), so the
official loop runs its sort-based filtering. Smoke size: the first 16 tokens of each image.
"""

from __future__ import annotations

import pytest
import torch
from conftest import FULL, interleaved
from official_generation import official_generate

from magvit2.nn.transformer import ARConfig, ARTransformer

IMAGES = 8
TOKENS = 256 if FULL else 16
SETTINGS = dict(cfg=(4.0, 4.0), temperature=(1.0, 1.0), top_k=(0, 0), top_p=(0.96, 0.96))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = ARTransformer(ARConfig(dim=256, n_head=4, spatial_n_layer=4, factorized_n_layer=1)).eval()
    for head in m.head:  # the released heads are trained; zero heads would make every draw uniform
        torch.nn.init.normal_(head.weight, 0.0, 0.05)
    return m


def test_official_loop_matches_generate_when_greedy(model):
    """The baseline computes the same model: greedy tokens agree (float64, so no near-tie can flip an argmax)."""
    m64 = ARTransformer(model.config).double().eval()
    m64.load_state_dict(model.state_dict())
    classes = torch.tensor([1, 500])
    greedy = dict(SETTINGS, top_k=(1, 1))
    ours = m64.generate(classes, num_tokens=6, **greedy)
    pre, post = official_generate(m64, classes, num_tokens=6, **greedy)
    assert torch.equal(ours.pre, pre) and torch.equal(ours.post, post)


def test_generation_vs_official(model, ratio):
    classes = torch.arange(IMAGES) * 7
    run = dict(num_tokens=TOKENS, **SETTINGS)
    fns = {
        "ours": lambda: model.generate(classes, seed=1, **run),
        "official": lambda: official_generate(model, classes, **run),
    }
    if FULL:  # inductor compiles the two step graphs in tens of seconds on 2 cores: full runs only
        fns["ours compiled"] = lambda: model.generate(classes, seed=1, compile=True, **run)
    out = model.generate(classes, seed=1, **run)
    assert out.pre.shape == (IMAGES, TOKENS) and bool((out.post < 4096).all())
    times = interleaved(fns, rounds=3 if FULL else 1)
    name = f"generate {IMAGES}+{IMAGES} rows x {TOKENS} tokens cfg"
    tps = {k: IMAGES * TOKENS / t for k, t in times.items()}
    ratio(name, "ours / official (tokens/s)", tps["ours"] / tps["official"], ">= 4")
    if "ours compiled" in tps:
        ratio(name, "ours compiled / official (tokens/s)", tps["ours compiled"] / tps["official"])
    for k, v in tps.items():
        ratio(name, f"{k} tokens/s (context)", v)


def test_generate(benchmark, model):
    classes = torch.arange(IMAGES) * 7
    benchmark.group = f"generate {IMAGES} images x {TOKENS} tokens, cfg"
    out = benchmark.pedantic(
        lambda: model.generate(classes, seed=1, num_tokens=TOKENS, **SETTINGS), rounds=3 if FULL else 1
    )
    assert out.pre.shape == (IMAGES, TOKENS)
