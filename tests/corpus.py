"""Builders for tiny test cohorts (synthetic pixels; real data lives in ../shared)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def textured(h: int = 96, w: int = 80, seed: int = 0) -> np.ndarray:
    """A non-constant 8-bit image (gradient + noise), bright blob in the middle."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = 40 + 60 * yy / h + 20 * xx / w + rng.normal(0, 8, (h, w))
    img += 100 * np.exp(-(((yy - h / 2) / (h / 5)) ** 2 + ((xx - w / 2) / (w / 5)) ** 2))
    return np.clip(img, 0, 255).astype(np.uint8)


def save(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def png_bomb(path: Path, width: int = 60_000, height: int = 60_000) -> Path:
    """A tiny, valid-header PNG that declares a huge canvas (decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def bar_task(n: int, seed: int):
    """A learnable toy age task for training tests: the row of a bright bar encodes the
    age. Returns a boneage.training.TensorData of n 32x32 images."""
    import torch

    from boneage.training import TensorData

    rng = np.random.default_rng(seed)
    age = rng.uniform(0, 239, n).astype(np.float32)
    x = np.zeros((n, 1, 32, 32), np.uint8)
    for i, a in enumerate(age):
        r = int(a / 240 * 28)
        x[i, 0, r : r + 4, 4:28] = 255
    return TensorData([f"i{i}" for i in range(n)], torch.from_numpy(x), torch.from_numpy(age),
                      torch.ones(n))  # fmt: skip


# ----------------------------------------------------------------------------- QC corpus
# Bad inputs of every kind the image QC must handle, made from a real upright radiograph
# (`hand`, 2-D uint8) or drawn here; saved losslessly (PNG), so that a corrected copy is
# pixel-identical to the upright original.


def photo() -> np.ndarray:
    """scikit-image's 'camera' photograph (a man with a camera), grayscale uint8."""
    import skimage.data

    return np.asarray(skimage.data.camera(), dtype=np.uint8)


def noise(h: int = 400, w: int = 320, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def gradient(h: int = 400, w: int = 320) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (255 * (0.7 * yy / h + 0.3 * xx / w)).astype(np.uint8)


def shapes(h: int = 400, w: int = 320) -> np.ndarray:
    from PIL import ImageDraw

    img = Image.new("L", (w, h), 40)
    d = ImageDraw.Draw(img)
    d.ellipse([30, 40, 200, 160], fill=220)
    d.rectangle([150, 220, 300, 380], fill=120)
    d.polygon([(20, 390), (120, 250), (160, 390)], fill=250)
    return np.asarray(img)


def qc_corpus(d: Path, hand: np.ndarray) -> dict[str, str]:
    """Write one file of every QC kind into d; returns {file stem: expected outcome}, an
    outcome being the flags QC sets ('' for none) or 'error:<reason>'."""
    expected = {}

    def put(stem: str, px: np.ndarray, want: str) -> None:
        save(d / f"{stem}.png", np.ascontiguousarray(px))
        expected[stem] = want

    put("good", hand, "")
    put("rot90", np.rot90(hand, 1), "auto_rotated_90")  # lies 90° counter-clockwise
    put("rot180", np.rot90(hand, 2), "auto_rotated_180")
    put("rot270", np.rot90(hand, 3), "auto_rotated_270")
    put("inverted", 255 - hand, "auto_inverted")
    put("inverted_rot90", np.rot90(255 - hand, 1), "auto_inverted;auto_rotated_90")
    put("photo", photo(), "error:not_a_hand")
    put("noise", noise(), "error:not_a_hand")
    put("gradient", gradient(), "error:not_a_hand")
    put("shapes", shapes(), "error:not_a_hand")
    put("tiny", noise(10, 10), "error:too_small")
    put("sliver", noise(20, 2000), "error:too_small")
    small = np.asarray(Image.fromarray(hand).resize((60, 60), Image.Resampling.LANCZOS))
    put("tiny_hand", small, "error:too_small")
    put("blank", np.full((300, 300), 90, np.uint8), "error:blank_image")
    good = (d / "good.png").read_bytes()
    (d / "truncated.png").write_bytes(good[: len(good) // 3])
    expected["truncated"] = "error:unreadable_image"
    Image.fromarray(np.full((300, 300), np.nan, np.float32)).save(d / "nan.tiff")
    expected["nan"] = "error:unreadable_image"
    return expected
