"""The one packing of factorized group indices: pack_groups / unpack_groups against the LFQ's own indices."""

import pytest
import torch

from magvit2 import ops
from magvit2.data.tokens import pack_groups, unpack_groups


@pytest.mark.parametrize("bits", [(6, 12), (5, 5), (1, 17), (3, 4, 11)], ids=lambda b: "+".join(map(str, b)))
def test_pack_unpack_match_the_quantizer(bits):
    z = torch.randn(257, sum(bits))
    full = ops.lfq_quantize(z).indices
    groups = ops.lfq_quantize(z, list(bits)).indices
    assert torch.equal(pack_groups(groups, bits), full)
    assert all(torch.equal(a, b) for a, b in zip(unpack_groups(full, bits), groups, strict=True))


def test_pack_passes_a_plain_index_and_checks_the_group_count():
    full = torch.arange(10)
    assert pack_groups(full, None) is full
    with pytest.raises(ValueError, match="got 2 index groups but factorized_bits is \\(6,\\)"):
        pack_groups((full, full), (6,))
