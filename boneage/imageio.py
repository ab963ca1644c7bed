"""Decoding cohort images (PNG/JPEG/TIFF/BMP and DICOM) into normalized 8-bit arrays.

Stored images are 8-bit grayscale: RSNA sources are 8-bit already, and for DICOM the
VOI LUT/window (or a robust min-max window when none is given,
`boneage.windowing.robust_range`) is applied first, which is how a radiologist views the
image; the networks consume 8-bit input, so 16 bits in the store would double its size
for no gain downstream.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from boneage.rejects import Reason, RejectError
from boneage.windowing import robust_range, window_to_uint8

try:  # ISA-L deflate: same zlib stream format, several times faster at low levels
    from isal import isal_zlib as _isal_zlib
except ImportError:  # pragma: no cover - optional speed-up
    _isal_zlib = None

# Order of preference when one id has several image files.
SUFFIX_PRIORITY = [".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff", ".bmp", ".webp",
                   ".gif"]  # fmt: skip
IMAGE_SUFFIXES = set(SUFFIX_PRIORITY)
# what a file starts with, for image files whose name has no (or another) suffix
_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"II*\x00",
          b"MM\x00*", b"BM")  # fmt: skip


def sniff_image(head: bytes) -> bool:
    """True when `head` (the first >= 132 bytes of a file) starts like an image format
    ingest reads: PNG, JPEG, GIF, TIFF, BMP, WebP, or DICOM Part 10 (DICM at byte 128)."""
    if head[128:132] == b"DICM":
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return any(head.startswith(m) for m in _MAGIC)


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # 2-D uint8, bone bright
    format: str  # png / jpeg / dicom / tiff / bmp
    sex: str | None = None  # only from DICOM headers
    chronological_age_months: float | None = None
    age_source: str | None = None


def decode_file(path: Path, data: bytes, max_pixels: int) -> DecodedImage:
    """Decode one file's bytes. Raises RejectError with the reason when it cannot."""
    if len(data) >= 132 and data[128:132] == b"DICM" or path.suffix.lower() in {".dcm", ".dicom"}:
        from boneage.dicom import read_dicom

        pixels, info = read_dicom(path, max_pixels, data)
        return DecodedImage(
            pixels=pixels,
            format="dicom",
            sex=info.sex,
            chronological_age_months=info.chronological_age_months,
            age_source=info.age_source,
        )
    return decode_raster(data, max_pixels)


def decode_raster(data: bytes, max_pixels: int) -> DecodedImage:
    """PNG/JPEG/TIFF/BMP/WebP bytes → 2-D uint8 (EXIF orientation applied, 16-bit windowed)."""
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise RejectError(Reason.NOT_AN_IMAGE, "not a readable image format") from exc
    except Image.DecompressionBombError as exc:  # PIL's own guard (> 2x its pixel limit)
        raise RejectError(Reason.TOO_MANY_PIXELS, f"{exc} (max_pixels={max_pixels})") from exc
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a reject, not a crash
        raise RejectError(Reason.UNREADABLE_IMAGE, f"cannot open image: {exc}") from exc
    w, h = img.size
    if w * h > max_pixels:
        raise RejectError(
            Reason.TOO_MANY_PIXELS, f"{w}x{h} = {w * h} pixels exceeds max_pixels={max_pixels}"
        )
    fmt = (img.format or "unknown").lower()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
        img = ImageOps.exif_transpose(img)
    except Exception as exc:  # noqa: BLE001
        raise RejectError(Reason.UNREADABLE_IMAGE, f"truncated or corrupt {fmt}: {exc}") from exc
    return DecodedImage(pixels=to_uint8_gray(img), format=fmt)


def to_uint8_gray(img: Image.Image) -> np.ndarray:
    """Any PIL image → 2-D uint8. High bit depths are windowed to 0..255 over their
    robust range (`robust_range`: a saturated marker or a hot pixel does not set the
    window). Non-finite values (NaN/inf in float images) make the image unreadable."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        bad = int((~np.isfinite(arr)).sum())
        if bad:
            raise RejectError(
                Reason.UNREADABLE_IMAGE,
                f"{bad} of {arr.size} pixel values are not finite numbers (NaN or inf)",
            )
        return window_to_uint8(arr, *robust_range(arr))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on black so transparent padding does not become a bright frame.
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(bg, rgba)
    if img.mode != "L":
        img = img.convert("L")
    return np.asarray(img, dtype=np.uint8).copy()


def resize_long_side(pixels: np.ndarray, long_side: int) -> tuple[np.ndarray, float]:
    """Downscale so the long side is at most `long_side` (never upscale; aspect kept).

    Returns the image and the scale factor stored/original.
    """
    h, w = pixels.shape
    longest = max(h, w)
    if longest <= long_side:
        return pixels, 1.0
    scale = long_side / longest
    return _lanczos(pixels, max(1, round(w * scale)), max(1, round(h * scale))), scale


def _lanczos(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Antialiased resize; reducing_gap: a fast integer box pre-reduction first."""
    out = Image.fromarray(pixels).resize((width, height), Image.Resampling.LANCZOS,
                                         reducing_gap=3.0)  # fmt: skip
    return np.asarray(out, dtype=np.uint8)


def resize_square(pixels: np.ndarray, long_side: int) -> tuple[np.ndarray, float]:
    """Resize to a square whose side is the long side, at most `long_side`: the short side
    is stretched to it (the geometry of the RSNA 299-px copies, which are squashed
    squares). Returns the image and the scale factor stored/original of the long side; the
    short side's own factor is store side / its original length.
    """
    h, w = pixels.shape
    longest = max(h, w)
    side = min(longest, long_side)
    if h == w == side:
        return pixels, 1.0
    return _lanczos(pixels, side, side), side / longest


def encode_png(pixels: np.ndarray, compress_level: int = 1) -> bytes:
    """2-D uint8 → an 8-bit grayscale PNG; H×W×3 uint8 → an 8-bit RGB PNG.

    Written directly (PNG "Sub" filter on every row + deflate) because encoding is the
    largest cost of ingest: Pillow's encoder (adaptive filters, zlib) is ~3x slower than
    Sub + zlib-RLE, and ISA-L's deflate (levels 0-3, used when `isal` is installed) is
    another ~5x faster at a similar size. Levels 4-9 use zlib. Any PNG reader decodes it.
    """
    rgb = pixels.ndim == 3 and pixels.shape[2] == 3
    if pixels.dtype != np.uint8 or not (pixels.ndim == 2 or rgb):
        raise ValueError(f"encode_png needs a 2-D or H×W×3 uint8 array, got {pixels.dtype} "
                         f"{pixels.shape}")  # fmt: skip
    h, w = pixels.shape[:2]
    bpp = 3 if rgb else 1  # bytes per pixel: Sub subtracts the byte one pixel to the left
    row = np.ascontiguousarray(pixels).reshape(h, w * bpp)
    raw = np.empty((h, w * bpp + 1), dtype=np.uint8)
    raw[:, 0] = 1  # filter type 1 = Sub: each byte minus the same byte of the pixel before
    raw[:, 1 : 1 + bpp] = row[:, :bpp]
    np.subtract(row[:, bpp:], row[:, :-bpp], out=raw[:, 1 + bpp :])
    if _isal_zlib is not None and compress_level <= 3:
        idat = _isal_zlib.compress(raw.tobytes(), compress_level)
    else:
        comp = zlib.compressobj(compress_level, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
        idat = comp.compress(raw.tobytes()) + comp.flush()
    # 8-bit, grayscale (colour type 0) or truecolour (2), no interlace
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2 if rgb else 0, 0, 0, 0)
    return b"".join(
        [_PNG_SIGNATURE, _png_chunk(b"IHDR", ihdr), _png_chunk(b"IDAT", idat),
         _png_chunk(b"IEND", b"")]
    )  # fmt: skip


def write_png(path: Path, image, compress_level: int = 1) -> None:
    """Write an L or RGB PIL image (or a uint8 array) as PNG with `encode_png` (fast)."""
    Path(path).write_bytes(encode_png(np.asarray(image), compress_level))


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind)) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes from the store → 2-D uint8."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("L") if img.mode != "L" else img, dtype=np.uint8)
