"""safetensors files whose header lies about sizes are refused with a clear error by every loader of our format."""

import json
import struct

import pytest
import torch

from magvit2.checkpoints import load_ar_checkpoint
from magvit2.checkpoints.ar import save_ar_pretrained
from magvit2.nn import ARTransformer, Tokenizer
from magvit2.nn.weights import CheckpointError, load_safetensors


def _rewrite_header(path, edit):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


def _first_tensor(header):
    return next(k for k in header if k != "__metadata__")


LIES = {
    "shape larger than its bytes": lambda h: h[_first_tensor(h)].update(
        shape=[s * 2 for s in h[_first_tensor(h)]["shape"]]
    ),
    "offsets past the end of the file": lambda h: h[_first_tensor(h)].update(
        data_offsets=[h[_first_tensor(h)]["data_offsets"][0], 1 << 40]
    ),
    "dtype wider than its bytes": lambda h: h[_first_tensor(h)].update(dtype="F64"),
}


@pytest.mark.parametrize("lie", list(LIES), ids=lambda s: s.replace(" ", "-"))
def test_lying_headers_are_refused(tmp_path, lie):
    tok_dir = tmp_path / "model"
    Tokenizer.from_preset("tiny").save_pretrained(tok_dir)
    save_ar_pretrained(ARTransformer.from_preset("tiny"), tok_dir)
    for name in ("model.safetensors", "transformer.safetensors"):
        _rewrite_header(tok_dir / name, LIES[lie])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_safetensors(str(tok_dir / "model.safetensors"))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        Tokenizer.from_pretrained(tok_dir)
    with pytest.raises(CheckpointError, match="safetensors"):
        load_ar_checkpoint(tok_dir)


def test_an_honest_rewrite_still_loads(tmp_path):
    Tokenizer.from_preset("tiny").save_pretrained(tmp_path)
    _rewrite_header(tmp_path / "model.safetensors", lambda h: None)
    assert isinstance(Tokenizer.from_pretrained(tmp_path), torch.nn.Module)


# ---- corrupt .ckpt files: every bit flip is refused or harmless (the zip's CRC32 records are checked) ----


def _flip(path, out, pos, bit=3):
    data = bytearray(path.read_bytes())
    data[pos] ^= 1 << bit
    out.write_bytes(bytes(data))


def _member_span(path, suffix):
    """(start, end) bytes of a member's data in the zip torch.save wrote (stored, not compressed)."""
    import zipfile

    info = next(i for i in zipfile.ZipFile(path).infolist() if i.filename.endswith(suffix))
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
    start = info.header_offset + 30 + name_len + extra_len
    return start, start + info.compress_size


def test_bit_flips_in_a_saved_checkpoint_are_refused_or_leave_the_weights_unchanged(tmp_path):
    from magvit2.nn.weights import safe_torch_load

    path = tmp_path / "tok.ckpt"
    torch.save({"state_dict": Tokenizer.from_preset("tiny").state_dict(), "global_step": 3}, path)
    reference = torch.load(path, weights_only=True)["state_dict"]
    size = path.stat().st_size
    pkl = _member_span(path, "data.pkl")
    # the local header, the pickle, a spread over the tensor data, and the central directory at the end
    positions = [5, 20, 40, pkl[0] + 7, (pkl[0] + pkl[1]) // 2, pkl[1] - 3]
    positions += [size * i // 23 for i in range(1, 23)] + [size - 200, size - 60, size - 20]
    refused = 0
    for pos in positions:
        bad = tmp_path / "bad.ckpt"
        _flip(path, bad, pos)
        try:
            sd = safe_torch_load(bad)["state_dict"]
        except CheckpointError as e:
            assert str(bad) in str(e) and "\n" not in str(e), e
            refused += 1
            continue
        assert sd.keys() == reference.keys(), pos
        changed = [k for k in reference if sd[k].dtype != reference[k].dtype or not torch.equal(sd[k], reference[k])]
        assert not changed, f"a flip at byte {pos} of {size} loaded changed weights: {changed[:3]}"
    assert refused >= len(positions) - 4


def test_a_corrupt_member_is_named_by_every_ckpt_loader(tmp_path):
    from magvit2.checkpoints import load_checkpoint
    from magvit2.nn.lpips import LPIPS
    from magvit2.nn.weights import safe_torch_load

    path = tmp_path / "tok.ckpt"
    torch.save({"state_dict": Tokenizer.from_preset("tiny").state_dict()}, path)
    start, end = max(
        (_member_span(path, f"data/{i}") for i in range(len(Tokenizer.from_preset("tiny").state_dict()))),
        key=lambda span: span[1] - span[0],
    )
    _flip(path, tmp_path / "bad.ckpt", (start + end) // 2)
    pattern = r"bad\.ckpt is corrupt: member \S+/data/\d+ fails its check \(BadZipFile: Bad CRC-32"
    for load in (safe_torch_load, load_checkpoint, lambda p: LPIPS(backbone=p, heads=p)):
        with pytest.raises(CheckpointError, match=pattern):
            load(tmp_path / "bad.ckpt")


# ---- safetensors whose header lies about the dtype with an equal width ----


def _int_lie(header):
    assert header["encoder.conv_in.weight"]["dtype"] == "F32"
    header["encoder.conv_in.weight"]["dtype"] = "I32"  # same width: the safetensors reader accepts it


def test_an_equal_width_dtype_lie_is_refused_naming_the_tensor(tmp_path):
    from magvit2.checkpoints import load_ar_pretrained

    Tokenizer.from_preset("tiny", factorized_bits=(6, 12)).save_pretrained(tmp_path)
    save_ar_pretrained(ARTransformer.from_preset("tiny"), tmp_path)
    _rewrite_header(tmp_path / "model.safetensors", _int_lie)
    assert load_safetensors(str(tmp_path / "model.safetensors"))["encoder.conv_in.weight"].dtype == torch.int32
    with pytest.raises(CheckpointError, match=r"model.safetensors .*wrong dtype: encoder.conv_in.weight int32"):
        Tokenizer.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"wrong dtype: encoder.conv_in.weight int32 \(expected a float dtype\)"):
        load_ar_pretrained(tmp_path)

    def lie_in_transformer(header):
        header["pre_emb.weight"]["dtype"] = "I32"

    Tokenizer.from_preset("tiny", factorized_bits=(6, 12)).save_pretrained(tmp_path)
    _rewrite_header(tmp_path / "transformer.safetensors", lie_in_transformer)
    with pytest.raises(CheckpointError, match=r"transformer.safetensors .*wrong dtype: pre_emb.weight int32"):
        load_ar_pretrained(tmp_path)


# ---- NaN / inf weights ----


def test_nonfinite_weights_are_refused_naming_the_first_tensor(tmp_path):
    from magvit2.checkpoints import load_ar_checkpoint, load_ar_pretrained, load_checkpoint

    tok = Tokenizer.from_preset("tiny", factorized_bits=(6, 12))
    with torch.no_grad():
        tok.decoder.conv_out.weight[0, 0, 0, 0] = float("nan")
    tok.save_pretrained(tmp_path / "tok")
    one_line = r"tensor decoder.conv_out.weight holds 1 NaN/inf value\(s\) of \d+; refusing non-finite weights"
    for load in (Tokenizer.from_pretrained, load_checkpoint):
        with pytest.raises(CheckpointError, match="model.safetensors: " + one_line):
            load(tmp_path / "tok")
    loaded = Tokenizer.from_pretrained(tmp_path / "tok", allow_nonfinite=True)
    assert loaded.decoder.conv_out.weight.isnan().sum() == 1

    transformer = ARTransformer.from_preset("tiny")
    with torch.no_grad():
        transformer.post_emb.weight[1, 2] = float("inf")
    sd = {f"transformer.{k}": v for k, v in transformer.state_dict().items()}
    sd |= {f"first_stage_model.{k}": v for k, v in tok.state_dict().items()}
    torch.save({"state_dict": sd}, tmp_path / "ar.ckpt")
    with pytest.raises(CheckpointError, match=r"ar.ckpt: tensor post_emb.weight holds 1 NaN/inf"):
        load_ar_checkpoint(tmp_path / "ar.ckpt", n_head=4, block_size=64)
    with pytest.raises(CheckpointError, match=r"ar.ckpt: tensor decoder.conv_out.weight holds 1 NaN/inf"):
        load_checkpoint(tmp_path / "ar.ckpt", use_ema=False)  # the tokenizer inside the AR checkpoint
    save_ar_pretrained(transformer, tmp_path / "tok")
    with pytest.raises(CheckpointError, match="transformer.safetensors: tensor post_emb.weight holds 1 NaN/inf"):
        load_ar_pretrained(tmp_path / "tok")
    loaded, _ = load_ar_checkpoint(tmp_path / "tok", allow_nonfinite=True)
    assert loaded.post_emb.weight.isinf().sum() == 1


# ---- values that are not tensors with data ----


def test_meta_and_non_tensor_values_give_one_line_errors(tmp_path):
    from magvit2.checkpoints import load_ar_checkpoint, load_checkpoint

    sd = Tokenizer.from_preset("tiny").state_dict()
    torch.save({"state_dict": {**sd, "decoder.conv_out.bias": torch.empty(3, device="meta")}}, tmp_path / "meta.ckpt")
    with pytest.raises(
        CheckpointError, match=r"meta.ckpt does not fit the tokenizer: meta tensors \(no data\): decoder"
    ):
        load_checkpoint(tmp_path / "meta.ckpt")
    torch.save({"state_dict": {**sd, "encoder.conv_in.weight": [1.0, 2.0]}}, tmp_path / "list.ckpt")
    with pytest.raises(CheckpointError, match=r"not tensors: encoder.conv_in.weight \(list\)"):
        load_checkpoint(tmp_path / "list.ckpt")
    torch.save({"state_dict": {**sd, "decoder.conv_out.bias": "zeros"}}, tmp_path / "str.ckpt")
    with pytest.raises(
        CheckpointError, match=r"str.ckpt does not fit the tokenizer: not tensors: decoder.conv_out.bias"
    ):
        load_checkpoint(tmp_path / "str.ckpt")
    ar = {f"transformer.{k}": v for k, v in ARTransformer.from_preset("tiny").state_dict().items()}
    ar["transformer.pre_emb.weight"] = 7
    torch.save({"state_dict": ar}, tmp_path / "ar.ckpt")
    with pytest.raises(CheckpointError, match=r"not tensors: pre_emb.weight \(int\)"):
        load_ar_checkpoint(tmp_path / "ar.ckpt", n_head=4)


# ---- a write that fails (disk full, file size limit) leaves no half-written model folder ----

SAVE = """
import resource, signal, sys
from magvit2.nn import Tokenizer
tok = Tokenizer.from_preset("tiny")
if sys.argv[2] != "-":  # a file size limit: writes past it fail with EFBIG
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
try:
    tok.save_pretrained(sys.argv[1])
except OSError as e:
    print("OSError:", e)
"""


def _tiny_tmpfs_available():
    import shutil
    import subprocess

    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


def test_a_failed_model_folder_write_leaves_no_folder_and_one_line(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "new"
    run = subprocess.run([sys.executable, "-c", SAVE, str(out), "100000"], capture_output=True, text=True)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    assert run.stdout.strip().endswith("model.safetensors: File too large; nothing was left half-written"), run.stdout
    assert len(run.stdout.strip().splitlines()) == 1 and not out.exists()

    Tokenizer.from_preset("tiny").save_pretrained(out)  # an existing folder keeps its previous files whole
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    run = subprocess.run([sys.executable, "-c", SAVE, str(out), "100000"], capture_output=True, text=True)
    assert "File too large" in run.stdout
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    Tokenizer.from_pretrained(out)


def test_a_full_disk_leaves_no_model_folder(tmp_path):
    """A real ENOSPC: a 64 KiB tmpfs mounted in a user namespace (the tiny tokenizer's weights are 2.3 MB)."""
    import subprocess
    import sys

    if not _tiny_tmpfs_available():
        pytest.skip("no user-namespace tmpfs here (unshare -rm)")
    script = tmp_path / "save.py"
    script.write_text(SAVE)
    shell = f'mount -t tmpfs -o size=64k tmpfs /mnt && "{sys.executable}" {script} /mnt/model - && ls -A /mnt'
    run = subprocess.run(["unshare", "-rm", "sh", "-c", shell], capture_output=True, text=True)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    assert run.stdout == (
        "OSError: [Errno 28] cannot write /mnt/model/model.safetensors: No space left on device; "
        "nothing was left half-written\n"
    )  # and `ls -A /mnt` printed nothing: no folder, no temporary file
