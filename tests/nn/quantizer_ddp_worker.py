"""Two-process gloo run of LFQ(global_entropy=True), launched by test_nn_lfq_ddp.py (not a test module itself).

usage: python lfq_ddp_worker.py OUT_DIR   -> OUT_DIR/rank{0,1}.pt
Every rank builds the same full batch from seed 0 and takes its half; a 1x1 conv wrapped in DDP feeds the LFQ.
"""

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from magvit2 import LFQ

WORLD = 2


def full_batch() -> tuple[torch.Tensor, torch.Tensor, nn.Conv2d]:
    """The shared data: images (4, 3, 4, 4), latents (4, 12, 4, 4) and a conv, all from seed 0."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 4, 4, generator=g)
    z = torch.randn(4, 12, 4, 4, generator=g) * 0.05
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 12, 1)
    return x, z, conv


def run(rank: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(out_dir, 'store')}", rank=rank, world_size=WORLD)
    x, z, conv = full_batch()
    half = slice(rank * 2, rank * 2 + 2)
    lfq = LFQ(dim=12, global_entropy=True).train()

    model = DistributedDataParallel(conv)
    out = lfq(model(x[half]) * 0.1)
    out.loss.backward()  # DDP averages the conv gradients over the ranks

    z_local = z[half].clone().requires_grad_(True)
    direct = lfq(z_local)
    direct.loss.backward()

    torch.save(
        {
            "codebook_entropy": direct.codebook_entropy.detach(),
            "per_sample_entropy": direct.per_sample_entropy.detach(),
            "z_grad": z_local.grad,
            "conv_codebook_entropy": out.codebook_entropy.detach(),
            "conv_weight_grad": conv.weight.grad,
            "conv_bias_grad": conv.bias.grad,
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(run, args=(sys.argv[1],), nprocs=WORLD, join=True)
