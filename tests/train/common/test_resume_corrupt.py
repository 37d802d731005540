"""Resuming reads the checkpoint through the weights-only loader, which checks the zip's CRC32 records: a bit flipped
on disk stops the run with one line naming the file and the damaged member, instead of training on changed weights."""

import zipfile

from magvit2.cli import main


def test_resume_refuses_a_checkpoint_with_a_flipped_bit(tokens, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "ar", "--config", "ar-tiny", "--data", str(tokens / "tokens"), "--out", str(out),
            "--no-progress", "--threads", "1"]  # fmt: skip
    assert main([*argv, "--max-steps", "1"]) == 0
    last = out / "checkpoints" / "last.ckpt"
    with zipfile.ZipFile(last) as archive:  # the largest tensor's bytes: a weight of the model
        info = max(archive.infolist(), key=lambda i: i.file_size)
    data = bytearray(last.read_bytes())
    data[info.header_offset + info.file_size // 2 + 200] ^= 0x04
    last.write_bytes(bytes(data))
    capsys.readouterr()
    assert main([*argv, "--max-steps", "2", "--resume", "auto"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("magvit2 train: error: ") and err.count("\n") == 1, err
    assert f"{last} is corrupt: member {info.filename} fails its check (BadZipFile: Bad CRC-32" in err
