"""`magvit2 demo` on the embedded photographs, shortened: every artifact is written and held-out PSNR improves."""

import json

from PIL import Image

from magvit2.cli import main


def test_demo_writes_report_and_improves(tmp_path, capsys):
    out = tmp_path / "demo-out"
    args = ["--out", str(out), "--steps", "40", "--no-progress", "--set", "trainer.val_every_n_steps=20"]
    assert main(["demo", "tokenizer", *args]) == 0
    printed = capsys.readouterr().out
    assert "PSNR" in printed and "reconstructions.png" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 40 and metrics["heldout_crops"] == 64
    assert metrics["final"]["psnr"] > metrics["initial"]["psnr"] + 1.0
    assert metrics["psnr_gain_db"] == metrics["final"]["psnr"] - metrics["initial"]["psnr"]
    assert 0 < metrics["final"]["utilization"] <= 1 and metrics["final"]["codebook_size"] == 2**18
    for name in ("reconstructions.png", "curves.png", "codebook_usage.png"):
        with Image.open(out / name) as img:
            assert img.width > 100 and img.height > 100, name
    with Image.open(out / "reconstructions.png") as img:
        # the trainer's contact sheet: 8 held-out crops over their reconstructions, 32 px enlarged to 64 px tiles
        # 4 px apart, the rows labelled "input" and "reconstruction" at the left
        assert img.height == 2 * 64 + 3 * 4 and 8 * 64 + 9 * 4 + 40 < img.width < 8 * 64 + 9 * 4 + 100
