"""generate(): zero classes, and the decode step reading the model's own weights (no copy), so that a change of the
weights is seen by the next generation."""

import copy
import json
import subprocess
import sys

import torch

from magvit2.nn.ar.generation import DecodeStep, generate
from magvit2.nn.ar.transformer import ARTransformer

CHILD = r"""
import json, torch
from magvit2.nn.ar.generation import generate
from magvit2.nn.ar.transformer import ARTransformer
model = ARTransformer.from_preset("tiny").eval()  # float32: the CPU decode kernels
none = torch.zeros(0, dtype=torch.long)
plain, guided = generate(model, none), generate(model, none, cfg=(1.9, 2.0), num_tokens=5)
logits = generate(model, none, cfg=2.0, return_logits=True)
print(json.dumps([list(t.shape) for t in (plain.pre, plain.post, guided.pre, guided.post, *logits)]
                 + [str(plain.pre.dtype), str(logits.logits_post.dtype)]))
"""


def test_generate_with_no_classes_returns_empty_grids():
    """In a child: a kernel dividing by the row count would end the process with SIGFPE."""
    child = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, f"rc {child.returncode}: {child.stderr[-2000:]}"
    shapes = json.loads(child.stdout.splitlines()[-1])
    assert shapes == [[0, 64], [0, 64], [0, 5], [0, 5], [0, 64], [0, 64], [0, 64, 64], [0, 64, 4096],
                      "torch.int64", "torch.float32"]  # fmt: skip


def _model(seed=0):
    torch.manual_seed(seed)
    model = ARTransformer.from_preset("tiny").eval()
    for h in model.head:
        torch.nn.init.normal_(h.weight, 0, 0.5)
    return model


SETTINGS = dict(cfg=(1.9, 2.0), top_p=(0.9, 0.9), seed=3, num_tokens=12)


def test_decode_step_reads_the_weights_in_place():
    """Every tensor the step reads is a parameter's own storage: a generation copies none of the model."""
    model = _model()
    step = DecodeStep(model, rows=6, length=12)
    read = [t for w in step.spatial + step.intra for t in w] + [step.norm, *step.heads, step.pre_emb]
    params = {p.data_ptr(): p for p in model.parameters()}
    assert all(t.data_ptr() in params and t.shape == params[t.data_ptr()].shape for t in read)
    assert len(read) == 7 * (len(model.spatial_blocks) + len(model.factorized_blocks)) + 4
    classes = torch.tensor([1, 4, 4])
    first, second = generate(model, classes, **SETTINGS), generate(model, classes, **SETTINGS)
    assert torch.equal(second.pre, first.pre) and torch.equal(second.post, first.post)
    assert not any("decode" in k for k in model.state_dict())
    clone = copy.deepcopy(model)
    assert torch.equal(generate(clone, classes, **SETTINGS).post, first.post)


def _same_as_a_fresh_model(model, classes):
    """generate on `model` equals generate on a new model holding the same weights."""
    fresh = ARTransformer(model.config).to(next(model.parameters()).dtype).eval()
    fresh.load_state_dict(model.state_dict())
    got, want = generate(model, classes, **SETTINGS), generate(fresh, classes, **SETTINGS)
    assert torch.equal(got.pre, want.pre) and torch.equal(got.post, want.post)
    return got


def test_generation_follows_changes_of_the_parameters():
    model = _model(1)
    classes = torch.tensor([0, 7])
    before = _same_as_a_fresh_model(model, classes)
    with torch.no_grad():  # in place, as an optimizer step: the version counters move
        model.head[1].weight.mul_(-1.0)
        model.spatial_blocks[0].attention.wqkv.weight.add_(0.05)
        model.factorized_blocks[0].ffn_norm.weight.mul_(1.5)
    changed = _same_as_a_fresh_model(model, classes)
    assert not torch.equal(changed.post, before.post)
    model.load_state_dict(_model(2).state_dict())  # copy_ into the same tensors
    _same_as_a_fresh_model(model, classes)
    model.head[0].weight = torch.nn.Parameter(torch.randn_like(model.head[0].weight))  # a new tensor
    _same_as_a_fresh_model(model, classes)
    model.double()  # new storage and dtype: the ATen calls
    _same_as_a_fresh_model(model, classes)
    model.float()
    with torch.inference_mode():  # as `magvit2 sample`
        inside = generate(model, classes, **SETTINGS)
    assert torch.equal(_same_as_a_fresh_model(model, classes).post, inside.post)
    with torch.inference_mode():  # parameters made under inference_mode
        frozen = _model(1).float()
    assert torch.equal(generate(frozen, classes, **SETTINGS).post, before.post)
    with torch.no_grad():  # a write through .data (no version counter) is seen too: nothing is cached
        model.head[1].weight.data.mul_(-1.0)
    _same_as_a_fresh_model(model, classes)
