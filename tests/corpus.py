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
