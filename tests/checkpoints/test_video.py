"""Video tokenizer checkpoints: the official video Lightning layout (raw + model_ema.* + loss.*) read by
`load_checkpoint` into a VideoTokenizer (EMA preferred), our format, and inflation from an image checkpoint."""

import pytest
import torch

from magvit2 import Tokenizer, TokenizerConfig, VideoTokenizer, load_checkpoint
from magvit2.checkpoints import CheckpointError, infer_config, inflate_from_checkpoint
from magvit2.checkpoints.image import load_official
from magvit2.nn.video.tokenizer import VIDEO_PRESETS
from tests.checkpoints.test_image import lightning_checkpoint, same_weights


def seeded_video(seed):
    torch.manual_seed(seed)
    return VideoTokenizer.from_preset("tiny")


def test_official_video_checkpoint_prefers_ema(tmp_path):
    raw, ema = seeded_video(0), seeded_video(1)
    path = tmp_path / "video_tiny.ckpt"
    torch.save(lightning_checkpoint(raw, ema), path)
    model = load_checkpoint(path)
    assert isinstance(model, VideoTokenizer) and model.config == VIDEO_PRESETS["tiny"]
    assert same_weights(model, ema) and not same_weights(model, raw) and not model.training
    assert same_weights(load_checkpoint(path, use_ema=False), raw)
    loaded = load_official(path)
    assert loaded.source == "ema" and "encoder.conv_in.conv_1.weight" in loaded.ignored
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    assert torch.equal(model.encode(x).indices, ema.eval().encode(x).indices)


def test_infer_video_config_from_shapes():
    with torch.device("meta"):
        sd = VideoTokenizer.from_preset("open-magvit2-video-128-L").state_dict()
    config = infer_config(sd)
    assert config == VIDEO_PRESETS["open-magvit2-video-128-L"] and type(config).__name__ == "VideoTokenizerConfig"


def test_our_video_format_through_load_checkpoint(tmp_path):
    model = seeded_video(2)
    model.save_pretrained(tmp_path / "video")
    for path in (tmp_path / "video", tmp_path / "video" / "model.safetensors"):
        loaded = load_checkpoint(path)
        assert isinstance(loaded, VideoTokenizer) and same_weights(loaded, model)


def test_inflation_from_an_official_image_checkpoint_uses_its_ema(tmp_path):
    config = TokenizerConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1)  # the widths of the video "tiny" preset
    torch.manual_seed(4)
    raw, ema = Tokenizer(config), Tokenizer(config)
    path = tmp_path / "imagenet_tiny.ckpt"
    torch.save(lightning_checkpoint(raw, ema), path)
    video = inflate_from_checkpoint(VideoTokenizer.from_preset("tiny"), path)
    w = video.state_dict()["decoder.conv_out.conv_1.weight"]
    assert torch.equal(w[:, :, -1], ema.state_dict()["decoder.conv_out.weight"]) and not w[:, :, :-1].any()
    raw_video = inflate_from_checkpoint(VideoTokenizer.from_preset("tiny"), path, use_ema=False)
    assert torch.equal(raw_video.state_dict()["decoder.conv_out.conv_1.weight"][:, :, -1], raw.decoder.conv_out.weight)
    with pytest.raises(CheckpointError, match="holds a video tokenizer, not an image one"):
        video_path = tmp_path / "video.ckpt"
        torch.save(lightning_checkpoint(video, None), video_path)
        inflate_from_checkpoint(VideoTokenizer.from_preset("tiny"), video_path)
    wide = tmp_path / "wide.ckpt"
    torch.save(lightning_checkpoint(Tokenizer(TokenizerConfig(ch=64, ch_mult=(1, 2, 2), num_res_blocks=1)), None), wide)
    with pytest.raises(CheckpointError, match=r"wide\.ckpt: inflate: encoder\.conv_in\.weight \(64, 3, 3, 3\)"):
        inflate_from_checkpoint(VideoTokenizer.from_preset("tiny"), wide)


def test_magvit2_convert_writes_a_video_tokenizer(tmp_path, capsys):
    from magvit2.cli import main

    raw, ema = seeded_video(5), seeded_video(6)
    torch.save(lightning_checkpoint(raw, ema), tmp_path / "video_128_262144.ckpt")
    assert main(["convert", str(tmp_path / "video_128_262144.ckpt"), str(tmp_path / "out")]) == 0
    assert f"ema weights, {len(ema.state_dict())} tensors" in capsys.readouterr().out
    converted = VideoTokenizer.from_pretrained(tmp_path / "out")
    assert same_weights(converted, ema) and converted.config == VIDEO_PRESETS["tiny"]
