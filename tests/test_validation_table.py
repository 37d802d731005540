# ruff: noqa: E501  (one row per case reads better than wrapped rows)
"""Input validation at the public entry points: each bad input gives a ValueError (FileNotFoundError for paths)
whose message names the argument and what was expected. One row per case: the call and the expected message."""

import pytest
import torch

from magvit2 import ops
from magvit2.nn import LFQ, ARTransformer, Tokenizer
from magvit2.nn.ar import generate
from magvit2.train.ar.config import ARDataConfig, load_ar_config
from magvit2.train.tokenizer.config import load_config

TOK = Tokenizer.from_preset("tiny")
AR = ARTransformer.from_preset("tiny")
LONG = dict(dtype=torch.long)


def _ar(pre, post, cls):
    return AR(pre, post, cls)


TABLE = [
    # ops
    ("quantize 1-d", lambda: ops.lfq_quantize(torch.randn(5)), r"lfq_quantize: z must be 2-D \(N, K\), got shape \(5,\)"),
    ("quantize int", lambda: ops.lfq_quantize(torch.ones(2, 3, **LONG)), r"z must be float16, bfloat16, float32 or float64"),
    ("quantize split", lambda: ops.lfq_quantize(torch.randn(2, 3), [2, 2]), r"factorized_bits \[2, 2\] sum to 4, but z has K = 3"),
    ("entropy temperature", lambda: ops.lfq_entropy(torch.randn(2, 3), inv_temperature=0.0), r"inv_temperature must be a finite number > 0"),
    ("entropy K", lambda: ops.lfq_entropy(torch.randn(2, 40)), r"K = 40 channels .* K <= 32 is supported"),
    ("sample 1-d", lambda: ops.sample_tokens(torch.randn(5)), r"logits must be a floating \(rows, vocab\) tensor"),
    ("sample uncond", lambda: ops.sample_tokens(torch.randn(2, 5), uncond=torch.randn(2, 4)), r"uncond must match logits"),
    ("sample top_p", lambda: ops.sample_tokens(torch.randn(2, 5), top_p=0.0), r"top_p must be in \(0, 1\]"),
    ("sample top_k", lambda: ops.sample_tokens(torch.randn(2, 5), top_k=-1), r"top_k must be an int >= 0"),
    ("sample temperature", lambda: ops.sample_tokens(torch.randn(2, 5), temperature=0.0), r"temperature must be a finite number > 0"),
    ("sample NaN", lambda: ops.sample_tokens(torch.full((2, 5), float("nan"))), r"row 0 has NaN logits"),
    ("decode weight", lambda: ops.decode_block(torch.randn(2, 8), torch.ones(8), torch.randn(8, 8), torch.randn(8, 8), torch.ones(8), torch.randn(16, 8), torch.randn(16, 8), torch.randn(8, 16), torch.zeros(2, 2, 4, 4), torch.zeros(2, 2, 4, 4), torch.rand(4, 2, 2), torch.tensor(0), 1e-5), r"decode_block: wqkv must be \(24, 8\)"),
    ("decode pos", lambda: ops.decode_block(torch.randn(2, 8), torch.ones(8), torch.randn(24, 8), torch.randn(8, 8), torch.ones(8), torch.randn(16, 8), torch.randn(16, 8), torch.randn(8, 16), torch.zeros(2, 2, 4, 4), torch.zeros(2, 2, 4, 4), torch.rand(4, 2, 2), torch.tensor(4), 1e-5), r"decode_block: pos must be in \[0, 4\)"),
    ("decode logits cfg", lambda: ops.decode_logits(torch.randn(3, 8), torch.ones(8), torch.randn(16, 8), 1e-5, 2.0), r"decode_logits: with cfg_scale, z must hold \[cond; uncond\] rows"),
    # modules
    ("LFQ dim", lambda: LFQ(dim=0), r"LFQ: dim must be an int >= 1"),
    ("LFQ codebook", lambda: LFQ(codebook_size=1000), r"codebook_size must be a power of 2"),
    ("LFQ channels", lambda: LFQ(dim=18)(torch.randn(2, 10, 4, 4)), r"has K = 10 channels, expected 18"),
    ("tokenizer channels", lambda: TOK.encode(torch.randn(1, 4, 32, 32)), r"expected 3 input channels"),
    ("tokenizer size", lambda: TOK.encode(torch.randn(1, 3, 30, 30)), r"30x30 is not a positive multiple of the downsampling factor 4"),
    ("tokenizer NaN", lambda: TOK.encode(torch.full((1, 3, 32, 32), float("nan"))), r"contain NaN or infinite values"),
    ("token ids", lambda: TOK.decode_indices(torch.full((1, 8, 8), 1 << 20)), r"indices must lie in \[0, 262144\)"),
    ("AR class ids", lambda: _ar(torch.zeros(1, 64, **LONG), torch.zeros(1, 64, **LONG), torch.tensor([11])), r"class ids must lie in \[0, 10\]"),
    ("AR token ids", lambda: _ar(torch.full((1, 64), 64), torch.zeros(1, 64, **LONG), torch.tensor([1])), r"pre ids must lie in \[0, 64\)"),
    ("AR length", lambda: _ar(torch.zeros(1, 65, **LONG), torch.zeros(1, 65, **LONG), torch.tensor([1])), r"pre has 65 tokens; expected 1..64"),
    ("generate classes", lambda: generate(AR, torch.tensor([10])), r"generate: class ids must lie in \[0, 10\)"),
    ("generate cfg", lambda: generate(AR, torch.tensor([1]), cfg=(1.0,)), r"generate: cfg must be int or float or a pair"),
    ("generate top_p", lambda: generate(AR, torch.tensor([1]), top_p=(0.0, 1.0)), r"top_p must be in \(0, 1\]"),
    # configs
    ("config key", lambda: load_config("tiny", ["model.dimm=3"]), r"model: unknown key\(s\) \['dimm'\]; valid keys: \["),
    ("config section", lambda: load_config("tiny", ["nosection.x=1"]), r"unknown section\(s\) \['nosection'\]; valid sections"),
    ("config value", lambda: load_config("tiny", ["data.batch_size=0"]), r"data.batch_size must be a positive int, got 0"),
    ("config val steps", lambda: load_config("tiny", ["trainer.val_every_n_steps=0"]), r"trainer.val_every_n_steps must be a positive int or null"),
    ("AR config key", lambda: load_ar_config("ar-tiny", ["optim.lrr=1"]), r"optim: unknown key\(s\) \['lrr'\]; valid keys"),
    ("AR config lr", lambda: load_ar_config("ar-tiny", ["optim.lr=0"]), r"optim.lr must be a finite number > 0, got 0"),
    ("AR data source", lambda: ARDataConfig(images="x").check_source(), r"tokens on the fly need data.tokenizer"),
]  # fmt: skip


@pytest.mark.parametrize("call, message", [(c, m) for _, c, m in TABLE], ids=[n for n, _, _ in TABLE])
def test_bad_input_names_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_missing_files_and_presets():
    with pytest.raises(FileNotFoundError, match=r"--config 'nope': no such file and no such preset \(digits, "):
        load_config("nope")
    with pytest.raises(FileNotFoundError, match="not found"):
        Tokenizer.from_pretrained("/nonexistent/model")
