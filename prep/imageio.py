"""Robust image reading and writing at the edge of the pure core.

Arrays inside the project are RGB ``uint8`` H×W×3 images and boolean H×W masks; OpenCV's BGR order and
its many pixel formats (grey, 16-bit, RGBA) stop here.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"
# The image files prep, train and infer read (OpenCV decodes them all; the ISBI layout itself is PNG).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
# Pixels an image may declare before it is decoded (OpenCV's own cap): a 138-byte PNG can claim 60000×60000.
DEFAULT_MAX_PIXELS = 2**30


class ImageReadError(ValueError):
    """An input file that cannot be read as an image; the message names the file."""


def declared_size(source: bytes | Path) -> tuple[int, int] | None:
    """(width, height) from an image file's header (its bytes, or the file), without decoding its pixels; None
    when Pillow does not know the format (OpenCV's own checks then apply)."""
    from PIL import Image, UnidentifiedImageError

    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # the caller applies its own limit
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def check_pixels(path: Path, data: bytes | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
    """Refuse a file (read from ``data`` when given) whose header declares more than ``max_pixels`` pixels
    (None: no limit)."""
    size = declared_size(path if data is None else data) if max_pixels is not None else None
    if size is not None and size[0] * size[1] > max_pixels:
        raise ImageReadError(f"{path}: {size[0]}×{size[1]} = {size[0] * size[1]:,} pixels, over the limit of "
                             f"{max_pixels:,} (--max-pixels)")


def decode(path: Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A file's pixels as OpenCV decodes them (any depth and channel count; colour in BGR order). Its header's
    size is checked against ``max_pixels`` first."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ImageReadError(f"{path}: cannot read file ({err.strerror})") from err
    if not data:
        raise ImageReadError(f"{path}: empty file")
    if path.suffix.lower() == ".png":
        if not data.startswith(PNG_SIGNATURE):
            raise ImageReadError(f"{path}: not a PNG image (no PNG signature)")
        # libpng returns a partly decoded image for some truncations; the end chunk tells for sure.
        if not data.rstrip(b"\x00").endswith(PNG_END):
            raise ImageReadError(f"{path}: truncated PNG (no IEND chunk)")
    check_pixels(path, data, max_pixels)
    try:
        array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as err:  # e.g. over OpenCV's own pixel cap
        raise ImageReadError(f"{path}: cannot decode image ({str(err).strip().splitlines()[-1]})") from None
    except MemoryError:
        raise ImageReadError(f"{path}: not enough memory to decode it (lower --max-pixels to refuse such "
                             "images up front)") from None
    if array is None or array.size == 0:
        raise ImageReadError(f"{path}: cannot decode image")
    return array


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale 16-bit (or wider) samples to 8 bits with rounding; floats are taken as 0..1."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        top = max(int(array.max()), 1)
        if top <= 255:
            return array.astype(np.uint8)
        return np.clip(np.rint(array.astype(np.float64) * 255.0 / top), 0, 255).astype(np.uint8)
    raise TypeError(f"unsupported pixel type {array.dtype}")


def to_rgb(array: np.ndarray, order: str = "RGB") -> np.ndarray:
    """Any grey/RGB/RGBA array → uint8 H×W×3 RGB (alpha dropped, grey replicated)."""
    array = to_uint8(array)
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"unsupported image shape {array.shape}")
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    if order == "BGR":
        # In place for 3 channels: an 8192² scan is 200 MB, and a second copy is what bounds peak memory.
        if array.shape[2] == 3 and array.flags.writeable and array.flags.c_contiguous:
            return cv2.cvtColor(array, cv2.COLOR_BGR2RGB, dst=array)
        return cv2.cvtColor(np.ascontiguousarray(array[:, :, :3]), cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(array[:, :, :3])


# One grey for every model input (ITU-R BT.601 luma): infer's numpy and train's tf.data use these weights, so a
# grey model sees a colour image the same way in training and in prediction (a grey image: its own values).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def luma(rgb: np.ndarray) -> np.ndarray:
    """uint8 H×W×3 RGB → uint8 H×W×1 grey by LUMA_WEIGHTS, rounded."""
    weighted = rgb.astype(np.float32) @ np.asarray(LUMA_WEIGHTS, np.float32)
    return np.clip(np.rint(weighted), 0, 255).astype(np.uint8)[:, :, None]


def read_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a grey, RGB or RGBA image of 8 or 16 bits as uint8 H×W×3 RGB."""
    path = Path(path)
    try:
        return to_rgb(decode(path, max_pixels), order="BGR")
    except (TypeError, ValueError) as err:
        if isinstance(err, ImageReadError):
            raise
        raise ImageReadError(f"{path}: {err}") from err


def binarise(array: np.ndarray, rule: str = "nonzero") -> np.ndarray:
    """Nucleus mask (bool H×W) from an annotation image by ``rule``.

    ``nonzero``: any non-black pixel, read on the samples as stored (a 16-bit instance-label image's nucleus 7
    is nucleus, not a grey that rounds to 0 in 8 bits); ``half``: brightest channel ≥ half its range (8-bit
    128); ``otsu``: Otsu on the brightest channel; ``blur-otsu``: 3×3 blur then Otsu, the reference project's
    rule. All are exact on clean 0/255 masks except ``blur-otsu``, which rounds corners.
    """
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]  # an opaque alpha channel is not nucleus
    if rule == "nonzero":
        return (array > 0).any(axis=2) if array.ndim == 3 else array > 0
    grey = to_uint8(array)
    if grey.ndim == 3:
        grey = grey.max(axis=2)
    if rule == "half":
        return grey >= 128
    if rule in ("otsu", "blur-otsu"):
        if rule == "blur-otsu":
            grey = cv2.GaussianBlur(grey, (3, 3), 0)
        if grey.min() == grey.max():
            return grey > 0
        _, binary = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        return binary > 0
    raise ValueError(f"unknown mask rule {rule!r}")


MASK_RULES = ("nonzero", "half", "otsu", "blur-otsu")


def read_mask(path: str | os.PathLike, rule: str = "nonzero",
              max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a nucleus annotation image as a boolean H×W mask."""
    return binarise(decode(Path(path), max_pixels), rule)


# The tile masks' levels (the contract, docs/prep.md): white nucleus on black, the reference's format, and mid-grey
# for pixels that are neither (an outline GT's own line under --gt-rule auto-ignore-line), which training ignores
# where the config's [mask] rgb_map maps (128,128,128) to class -1.
NUCLEUS_LEVEL, IGNORE_LEVEL = 255, 128


def mask_to_rgb(levels: np.ndarray) -> np.ndarray:
    """uint8 H×W tile-mask levels (0, IGNORE_LEVEL, NUCLEUS_LEVEL) → uint8 H×W×3 in the tile masks' format."""
    return np.repeat(levels.astype(np.uint8)[:, :, None], 3, axis=2)


def encode_png(rgb: np.ndarray, compression: int = 3) -> bytes:
    """Encode an RGB (or grey) uint8 array as PNG bytes; deterministic for equal input."""
    array = rgb[:, :, ::-1] if rgb.ndim == 3 else rgb
    ok, buffer = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:
        raise OSError("PNG encoding failed")
    return buffer.tobytes()


def write_png(path: str | os.PathLike, rgb: np.ndarray, compression: int = 3) -> None:
    Path(path).write_bytes(encode_png(rgb, compression))
