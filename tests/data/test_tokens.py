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


def test_shards_store_class_names_and_older_ones_give_the_same(tmp_path):
    import json

    from magvit2.data.tokens import FORMAT_NAME, INDEX_NAME, TokenShards, TokenShardWriter

    writer = TokenShardWriter(tmp_path / "t", shard_size=2, meta={"format": FORMAT_NAME})
    writer.add(torch.zeros(3, 2, 2), ["dog/1.png", "cat/2.png", "dog/3.png"])
    index = json.loads(writer.close().read_text())
    assert index["class_names"] == ["cat", "dog"]  # sorted folder names: id i = class_names[i]
    shards = TokenShards(tmp_path / "t")
    assert shards.class_names == ["cat", "dog"] and shards.class_ids().tolist() == [1, 0, 1]
    del index["class_names"]  # a folder written before the key existed
    (tmp_path / "t" / INDEX_NAME).write_text(json.dumps(index))
    old = TokenShards(tmp_path / "t")
    assert old.class_names == ["cat", "dog"] and old.class_ids().tolist() == [1, 0, 1]
    (tmp_path / "t" / INDEX_NAME).write_text(json.dumps({**index, "class_names": ["dog", "cat"]}))
    assert TokenShards(tmp_path / "t").class_ids().tolist() == [0, 1, 0]  # the stored order wins
    (tmp_path / "t" / INDEX_NAME).write_text(json.dumps({**index, "class_names": ["dog"]}))
    with pytest.raises(ValueError, match=r"folders \['cat'\] are not among the 1 class names"):
        TokenShards(tmp_path / "t").class_ids()
