"""lfq_entropy(group=...) over real gloo process groups: the codebook entropy of the concatenated batch (K = 10: the
average all-reduced; K = 22: the tiled path over the all-gathered latents)."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from magvit2 import ops

WORLD = 2


def _worker(rank: int, init_file: str, z_full: torch.Tensor, sizes: list[int], out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        start = sum(sizes[:rank])
        z = z_full[start : start + sizes[rank]].clone().requires_grad_()
        per_sample, codebook = ops.lfq_entropy(z, 20.0, 1e-5, group=dist.group.WORLD)
        (0.5 * per_sample - codebook).backward()
        out[rank] = (per_sample.detach(), codebook.detach(), z.grad)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("k", [10, 22], ids=lambda k: f"K{k}")
def test_global_codebook_entropy_two_ranks(tmp_path, k):
    torch.manual_seed(0)
    sizes = [37, 91]  # unequal shards: the global average weights tokens, not ranks
    z_full = torch.randn(sum(sizes), k, dtype=torch.float64) * 0.2
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(str(tmp_path / "init"), z_full, sizes, out), nprocs=WORLD, join=True)

    z = z_full.clone().requires_grad_()
    _, codebook = ops.lfq_entropy(z, 20.0, 1e-5)
    # The per-sample term stays each rank's own mean; the codebook term is the concatenated batch's.
    ps_parts = [ops.lfq_entropy(z[:37], 20.0, 1e-5).per_sample_entropy, ops.lfq_entropy(z[37:], 20.0, 1e-5)[0]]
    loss_single = sum(0.5 * ps * 1.0 for ps in ps_parts) / WORLD - codebook
    (grad_single,) = torch.autograd.grad(loss_single, z)

    for rank in range(WORLD):
        ps, cb, _ = out[rank]
        torch.testing.assert_close(cb, codebook.detach(), rtol=1e-12, atol=0)
        torch.testing.assert_close(ps, ps_parts[rank].detach(), rtol=1e-12, atol=0)
    # DDP averages gradients over ranks: that average equals one process's gradient of the mean rank loss.
    grad_ddp = torch.cat([out[r][2] for r in range(WORLD)]) / WORLD
    torch.testing.assert_close(grad_ddp, grad_single, rtol=1e-9, atol=1e-12)
