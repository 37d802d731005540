"""The one packing of factorized group indices: pack_groups / unpack_groups against the LFQ's own indices."""

import pytest
import torch

from magvit2 import ops
from magvit2.data.tokens import FORMAT_NAME, INDEX_NAME, TokenShards, TokenShardWriter, pack_groups, unpack_groups

META = {"format": FORMAT_NAME, "dtype": "int32", "codebook_size": 2**18, "factorized_bits": [6, 12], "grid": [2, 2]}


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

    from magvit2.data.tokens import INDEX_NAME, TokenShards, TokenShardWriter

    writer = TokenShardWriter(tmp_path / "t", shard_size=2, meta=META)
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


def _folder(tmp_path, name="t"):
    writer = TokenShardWriter(tmp_path / name, shard_size=2, meta=META)
    writer.add(torch.arange(12).reshape(3, 2, 2) * 1000, ["a/1.png", "a/2.png", "b/3.png"])
    writer.close()
    return tmp_path / name


def _rewrite_shard(folder, tensor, name="shard-00000.safetensors", sources=("a/1.png", "a/2.png")):
    import json

    from safetensors.torch import save_file

    save_file({"indices": tensor}, str(folder / name), metadata={"sources": json.dumps(list(sources))})


def _edit_index(folder, **changes):
    import json

    index = json.loads((folder / INDEX_NAME).read_text())
    index.update(changes)
    (folder / INDEX_NAME).write_text(json.dumps(index))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool, torch.uint8])
def test_shards_of_another_dtype_are_refused(tmp_path, dtype):
    folder = _folder(tmp_path)
    _rewrite_shard(folder, torch.ones(2, 2, 2).to(dtype))
    with pytest.raises(ValueError, match=rf"shard-00000.safetensors: indices are {dtype}, expected int32") as e:
        TokenShards(folder)
    assert "\n" not in str(e.value)


def test_index_fields_are_checked_against_the_shards(tmp_path):

    good = TokenShards(_folder(tmp_path))
    assert len(good) == 3 and good.sources == ["a/1.png", "a/2.png", "b/3.png"]
    cases = [  # (change to tokens.json, or a shard rewritten; what the error must say)
        ({"num_images": 4}, "num_images is 4 but the shards hold 3 token grids"),
        ({"grid": [4, 4]}, r"indices have shape \(2, 2, 2\), expected \(n, 4, 4\)"),
        ({"codebook_size": 2**10}, r"factorized_bits must be positive ints summing to log2\(codebook_size\) = 10"),
        ({"codebook_size": 1000, "factorized_bits": None}, "codebook_size must be a power of two"),
        ({"codebook_size": 2**10, "factorized_bits": None}, r"indices span \[0, 7000\], expected \[0, 1024\)"),
        ({"shards": [{"file": "shard-00000.safetensors", "count": 3}]}, "holds 2 token grids but its count is 3"),
        ({"dtype": "float32"}, "dtype must be int32"),
        ({"model_config": {"z_channels": 16}}, r"codebook_size is 262144 but model_config.z_channels is 16"),
    ]
    for change, says in cases:
        folder = _folder(tmp_path, f"t{len(list(tmp_path.iterdir()))}")
        _edit_index(folder, **change)
        with pytest.raises(ValueError, match=says) as e:
            TokenShards(folder)
        assert str(folder / INDEX_NAME) in str(e.value) or "shard-00000" in str(e.value)
    folder = _folder(tmp_path, "sources")
    _rewrite_shard(folder, torch.zeros(2, 2, 2, dtype=torch.int32), sources=["a/1.png"])
    with pytest.raises(ValueError, match="metadata 'sources' names 1 files, expected 2"):
        TokenShards(folder)
    (folder / INDEX_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="tokens.json: not valid JSON"):
        TokenShards(folder)


@pytest.mark.parametrize("where", ["../outside.safetensors", "absolute"])
def test_a_shard_outside_the_folder_is_not_followed(tmp_path, where):
    folder = _folder(tmp_path)
    _rewrite_shard(tmp_path, torch.zeros(2, 2, 2, dtype=torch.int32), name="outside.safetensors")
    name = str(tmp_path / "outside.safetensors") if where == "absolute" else where
    _edit_index(folder, shards=[{"file": name, "count": 2}, {"file": "shard-00001.safetensors", "count": 1}])
    with pytest.raises(ValueError, match=r"shards\[0\].file .* lies outside .*: expected a file name inside"):
        TokenShards(folder)
