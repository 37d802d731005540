"""Hostile image files written byte by byte: headers that make PIL raise something other than OSError, a header
that passes but whose pixels are cut (fails only when decoded), and a tiny PNG of a huge aspect ratio."""

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def tiny_png(extra: bytes = b"") -> bytes:
    """A valid 4 x 4 RGB PNG, `extra` chunks before its pixels."""
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0))
    idat = png_chunk(b"IDAT", zlib.compress(b"".join(b"\x00" + b"\x80" * 12 for _ in range(4))))
    return PNG_SIGNATURE + ihdr + extra + idat + png_chunk(b"IEND", b"")


# name -> bytes; each makes Image.open raise (ValueError here: PIL's text-chunk and PPM checks) or is too elongated
BAD_HEADERS = {
    "huge_text.png": tiny_png(png_chunk(b"zTXt", b"k\x00\x00" + zlib.compress(b"a" * 2_000_000))),  # 2 MB of text
    "bad_maxval.ppm": b"P6\n4 4\n-5\n" + bytes(48),
    "bad_size.ppm": b"P6\n4 x\n255\n" + bytes(48),
    "cut_header.png": (PNG_SIGNATURE + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0)))[:20],
    "bad.tif": b"II*\x00\x08\x00\x00\x00\xff\xff",
}


def write_bad_headers(folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in BAD_HEADERS.items():
        (folder / name).write_bytes(data)
    return sorted(BAD_HEADERS)


def write_wide_png(path: Path, width: int = 2_000_000, height: int = 1) -> None:
    """A `width` x `height` black PNG: about 4 KB on disk for 1 x 2,000,000."""
    Image.new("L", (width, height)).save(path)


def write_photos(folder: Path, names: list[str], *, size: int = 32, seed: int = 0) -> None:
    """Random size x size RGB PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / name)


def truncate(path: Path) -> None:
    """Keep the first half of the file: the header still reads, the pixels do not decode."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
