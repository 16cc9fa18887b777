"""Readers for the ISBI 2014 inputs: EDF PNG pairs (``EDFnnn.png`` + ``EDFnnn_GT.png``) and the synthetic
MATLAB sets (``isbi_train.mat`` + ``isbi_train_GT.mat``; v5 via scipy, v7.3/HDF5 via h5py).

A third form pairs a folder of numbered images (``1.tif … 45.tif``, as the challenge's ``isbi_train.mat``
images are usually written out) with the nuclei of a ``*_GT.mat``: ``k.tif`` with cell k.

Discovery checks every pair before any work starts (names, PNG signature and end chunk, sizes, and the ground
truth's form: filled, or outlines to fill — ``prep.truth``), so a bad input stops the run before a single tile
is written.
"""

from __future__ import annotations

import functools
import hashlib
import re
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from prep.imageio import DEFAULT_MAX_PIXELS, PNG_END, PNG_SIGNATURE, ImageReadError, check_pixels, read_image, to_rgb
from prep.truth import FILLED, OUTLINE, Truth, TruthError, count_nuclei, describe, read_truth

GT_SUFFIX = "_GT"
ISBI_SUFFIXES = (".png",)  # the ISBI layout: EDFnnn.png + EDFnnn_GT.png
MAT_SUFFIX = ".mat"
NUMBERED_SUFFIXES = (".tif", ".tiff", ".png")  # images paired by number with a .mat's cells
# The nuclei variables of the ISBI 2014 challenge's synthetic sets. The challenge composed its 945 synthetic images
# from the isolated cells of its 16 real EDF fields (Lu et al., IEEE J-BHI 2017), so training on them shows a
# model the nuclei of every real field: a leak into any score on those fields.
ISBI_SYNTHETIC_NUCLEI = re.compile(r"(train|test)_nuclei", re.IGNORECASE)


class InputError(ValueError):
    """A problem with the input files; the message names the file."""


@dataclass(frozen=True)
class SourceRef:
    """One source image: a PNG pair, or one entry of a pair of .mat files."""

    name: str
    image_path: Path
    mask_path: Path
    index: int | None = None  # entry in a .mat cell array
    image_key: str | None = None  # None: the image is the file image_path
    mask_key: str | None = None
    gt_form: str = FILLED  # as discovery found it: FILLED, or OUTLINE (filled when read)
    nuclei: int | None = None  # in the whole source, once discovery has read its ground truth
    nucleus_fraction: float | None = None


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (prep's sources, a model's weights)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# A source is hashed once per run (discovery, then prep.json); weights change between runs and use file_sha256.
sha256 = functools.lru_cache(maxsize=256)(file_sha256)


def png_size(path: Path) -> tuple[int, int]:
    """(height, width) from a PNG's header, checking the signature and end chunk without decoding."""
    try:
        with path.open("rb") as handle:
            head = handle.read(33)
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 64))
            tail = handle.read()
    except OSError as err:
        raise InputError(f"{path}: cannot read file ({err.strerror})") from err
    if not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        raise InputError(f"{path}: not a PNG image (no PNG signature)")
    if not tail.rstrip(b"\x00").endswith(PNG_END):
        raise InputError(f"{path}: truncated PNG (no IEND chunk)")
    width, height = struct.unpack(">II", head[16:24])
    return height, width


def _normalise_exclusions(exclude: Sequence[str]) -> set[str]:
    return {Path(name).stem for name in exclude}


def discover_png_pairs(input_dir: Path, masks_dir: Path | None = None,
                       exclude: Sequence[str] = ()) -> list[SourceRef]:
    """Pair ``EDFnnn.png`` with ``EDFnnn_GT.png`` (in ``masks_dir`` when given, where ``EDFnnn.png`` also
    counts as the GT). Unrelated files are ignored with a warning; unpaired files are errors."""
    if not input_dir.is_dir():
        raise InputError(f"{input_dir}: input folder does not exist")
    mask_folder = masks_dir or input_dir
    if masks_dir is not None and not masks_dir.is_dir():
        raise InputError(f"{masks_dir}: --masks folder does not exist")

    images: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    for path in sorted(input_dir.iterdir()):
        if path.is_dir() or path.name.startswith("."):
            continue
        if path.suffix.lower() not in ISBI_SUFFIXES:
            warnings.warn(f"ignoring {path} (not a .png image)", stacklevel=2)
            continue
        if path.stem.endswith(GT_SUFFIX):
            if masks_dir is None:
                masks[path.stem[: -len(GT_SUFFIX)]] = path
            continue
        images[path.stem] = path
    if masks_dir is not None:
        for path in sorted(masks_dir.iterdir()):
            if path.is_dir() or path.suffix.lower() not in ISBI_SUFFIXES:
                continue
            stem = path.stem[: -len(GT_SUFFIX)] if path.stem.endswith(GT_SUFFIX) else path.stem
            if stem in masks and masks[stem] != path:
                raise InputError(f"{path}: two ground-truth files for {stem} ({masks[stem].name} too)")
            masks[stem] = path

    excluded = _normalise_exclusions(exclude)
    unknown = sorted(excluded - set(images))
    if unknown:
        raise InputError(f"--exclude {', '.join(unknown)}: no such image in {input_dir}")
    if not images and not masks:
        raise InputError(f"{input_dir}: no EDF images (*.png with *_GT.png) found")
    orphans = sorted(set(masks) - set(images))
    if orphans and masks_dir is None:
        raise InputError(f"{masks[orphans[0]]}: ground truth without image ({orphans[0]}.png missing)")
    missing = sorted(set(images) - set(masks))
    if missing:
        expected = mask_folder / f"{missing[0]}{GT_SUFFIX}.png"
        raise InputError(f"{images[missing[0]]}: image without ground truth ({expected} missing)")

    refs = [SourceRef(stem, images[stem], masks[stem]) for stem in sorted(images) if stem not in excluded]
    if not refs:
        raise InputError(f"{input_dir}: every image is excluded by --exclude")
    for ref in refs:
        image_size = png_size(ref.image_path)
        mask_size = png_size(ref.mask_path)
        if image_size != mask_size:
            raise InputError(
                f"{ref.mask_path}: size {mask_size[1]}×{mask_size[0]} differs from its image "
                f"{ref.image_path.name} ({image_size[1]}×{image_size[0]})"
            )
    return refs


# ---------------------------------------------------------------------------------------------- .mat

def _is_hdf5(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(8) == b"\x89HDF\r\n\x1a\n" or _has_hdf5_at_512(handle)


def _has_hdf5_at_512(handle) -> bool:
    # MATLAB v7.3 files start with a 512-byte text header, then the HDF5 superblock.
    handle.seek(512)
    return handle.read(8) == b"\x89HDF\r\n\x1a\n"


def _variables_v5(path: Path) -> dict[str, object]:
    import scipy.io

    try:
        return {k: v for k, v in scipy.io.loadmat(str(path)).items() if not k.startswith("__")}
    except Exception as err:  # scipy raises several types for corrupt files
        raise InputError(f"{path}: cannot read MATLAB file ({err})") from err


def _hdf5_value(handle, node) -> object:
    """A MATLAB v7.3 variable as numpy: cells (object references) as object arrays, matrices transposed
    back to MATLAB's row/column order."""
    import h5py

    if node.attrs.get("MATLAB_empty"):  # MATLAB stores [] as its dimensions, flagged by this attribute
        return np.zeros((0, 0))
    value = node[()]
    if h5py.check_dtype(ref=node.dtype) is not None:
        cells = np.empty(value.shape, dtype=object)
        for position, ref in np.ndenumerate(value):
            cells[position] = _hdf5_value(handle, handle[ref])
        return cells.T
    return np.asarray(value).T


def _variables_v73(path: Path) -> dict[str, object]:
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            return {k: _hdf5_value(handle, handle[k]) for k in handle if not k.startswith("#")}
    except OSError as err:
        raise InputError(f"{path}: cannot read MATLAB v7.3 file ({err})") from err


@functools.lru_cache(maxsize=4)
def mat_variables(path: Path) -> dict[str, object]:
    if not path.is_file():
        raise InputError(f"{path}: file does not exist")
    return _variables_v73(path) if _is_hdf5(path) else _variables_v5(path)


def _entries(value: object) -> list[object]:
    """Split a MATLAB variable into per-image entries: a cell array's cells, or the pages of H×W×N."""
    array = np.asarray(value)
    if array.dtype == object:
        return list(array.ravel(order="F"))
    if array.ndim == 2:
        return [array]
    if array.ndim == 3:
        return [array[:, :, i] for i in range(array.shape[2])]
    raise ValueError(f"unexpected array of shape {array.shape}")


def _merge_masks(entry: object, shape: tuple[int, int]) -> np.ndarray:
    """A nucleus annotation entry: one mask, or a cell of per-nucleus masks (OR-ed together); an empty entry
    (``[]`` or a cell of them: an image without nuclei) is an empty mask of the image's ``shape``."""
    array = np.asarray(entry)
    if array.dtype == object:
        parts = [_merge_masks(cell, shape) for cell in array.ravel() if np.asarray(cell).size]
        return np.logical_or.reduce(parts) if parts else np.zeros(shape, bool)
    return array > 0 if array.size else np.zeros(shape, bool)


def _pick_key(variables: dict[str, object], wanted: str | None, path: Path, pattern: str | None) -> str:
    if wanted:
        if wanted not in variables:
            raise InputError(f"{path}: no variable {wanted!r} (has {', '.join(sorted(variables))})")
        return wanted
    names = sorted(variables)
    if pattern:
        matching = [n for n in names if re.search(pattern, n, re.IGNORECASE)]
        if len(matching) == 1:
            return matching[0]
    if len(names) == 1:
        return names[0]
    raise InputError(f"{path}: cannot tell which variable to use among {', '.join(names)}")


def discover_mat_pair(image_path: Path, mask_path: Path | None, image_key: str | None = None,
                      mask_key: str | None = None, exclude: Sequence[str] = ()) -> list[SourceRef]:
    """Sources from an ISBI synthetic set: entry i of the image variable with entry i of the nuclei."""
    if mask_path is None:
        raise InputError(f"{image_path}: a .mat input needs --masks with the *_GT.mat file")
    images = mat_variables(image_path)
    masks = mat_variables(mask_path)
    image_key = _pick_key(images, image_key, image_path, r"isbi|train|test|image")
    mask_key = _pick_key(masks, mask_key, mask_path, r"nuclei")
    try:
        n_images = len(_entries(images[image_key]))
        n_masks = len(_entries(masks[mask_key]))
    except ValueError as err:
        raise InputError(f"{image_path}: {err}") from err
    if n_images != n_masks:
        raise InputError(f"{mask_path}: {n_masks} nucleus annotations for {n_images} images in {image_path}")
    stem = image_path.stem
    names = [f"{stem}_{i:03d}" for i in range(n_images)]
    excluded = _normalise_exclusions(exclude)
    unknown = sorted(excluded - set(names))
    if unknown:
        raise InputError(f"--exclude {', '.join(unknown)}: no such entry in {image_path}")
    return [SourceRef(name, image_path, mask_path, i, image_key, mask_key)
            for i, name in enumerate(names) if name not in excluded]  # sizes: check_truths


def _mat_image(value: object) -> np.ndarray:
    array = np.asarray(value)
    if np.issubdtype(array.dtype, np.floating) and array.size and float(np.nanmax(array)) > 1.0:
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)  # 0..255 stored as double
    return to_rgb(array)


def load_source(ref: SourceRef, gt_rule: str = "auto",
                max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 image, boolean nucleus mask) of one source."""
    image, truth = load_source_truth(ref, gt_rule, max_pixels)
    return image, truth.mask


def load_source_truth(ref: SourceRef, gt_rule: str = "auto",
                      max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, Truth]:
    """(RGB uint8 image, its Truth) of one source; ``Truth.levels()`` is what its tile masks hold."""
    if ref.image_key is None:
        image = read_image(ref.image_path, max_pixels)
    else:
        image = _mat_image(_entries(mat_variables(ref.image_path)[ref.image_key])[ref.index])
    if ref.index is None:
        truth = read_truth(ref.mask_path, gt_rule, max_pixels)
        if image.shape[:2] != truth.mask.shape:
            raise ImageReadError(f"{ref.mask_path}: size differs from its image {ref.image_path.name}")
    else:
        # The challenge's MATLAB ground truth holds filled masks (one per nucleus, or one per image).
        mask = _merge_masks(_entries(mat_variables(ref.mask_path)[ref.mask_key])[ref.index], image.shape[:2])
        truth = Truth(mask, FILLED, count_nuclei(mask))
    return image, truth


def check_truths(refs: Sequence[SourceRef], gt_rule: str = "auto",
                 warn=lambda message: warnings.warn(message, stacklevel=3),
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> list[SourceRef]:
    """Read every source's ground truth once (before any work), each with its form, nucleus count and nucleus
    fraction; an outline GT gets a warning naming it and what filling gave, an unreadable one (or a .mat entry
    whose size differs from its image, or an image whose header declares over ``max_pixels``) an InputError."""
    checked = []
    for ref in refs:
        try:
            if ref.index is None:  # an image file and its GT: their sizes were checked from the headers
                if ref.image_key is None:
                    check_pixels(ref.image_path, max_pixels=max_pixels)
                truth = read_truth(ref.mask_path, gt_rule, max_pixels)
            else:
                image, mask = load_source(ref, gt_rule, max_pixels)
                if image.shape[:2] != mask.shape:
                    raise InputError(f"{ref.mask_path}: cell {ref.index + 1} of {ref.mask_key} is "
                                     f"{mask.shape[1]}×{mask.shape[0]}, its image ({ref.image_path}, entry "
                                     f"{ref.index + 1}) is {image.shape[1]}×{image.shape[0]}")
                truth = Truth(mask, FILLED, count_nuclei(mask))
        except InputError:
            raise
        except (TruthError, ImageReadError) as err:
            raise InputError(str(err)) from None
        except ValueError as err:  # a .mat entry of an unexpected shape
            raise InputError(f"{ref.mask_path}: cell {ref.index + 1} of {ref.mask_key}: {err}") from None
        if truth.form == OUTLINE:
            warn(describe(truth, str(ref.mask_path), gt_rule))
        ref = replace(ref, gt_form=truth.form, nuclei=truth.nuclei, nucleus_fraction=truth.nucleus_fraction)
        checked.append(ref)
    return checked


def discover_numbered_images(input_dir: Path, mask_path: Path, mask_key: str | None = None,
                             exclude: Sequence[str] = ()) -> list[SourceRef]:
    """Images ``1.tif … N.tif`` (or .png) of ``input_dir`` with cells 1 … N of the nuclei in ``mask_path``."""
    numbered: dict[int, Path] = {}
    for path in sorted(input_dir.iterdir()):
        if path.is_dir() or path.name.startswith("."):
            continue
        if path.suffix.lower() not in NUMBERED_SUFFIXES or not path.stem.isdigit():
            warnings.warn(f"ignoring {path} (not a numbered image k{'/k'.join(NUMBERED_SUFFIXES)})", stacklevel=2)
            continue
        number = int(path.stem)
        if number in numbered:
            raise InputError(f"{path}: image {number} twice ({numbered[number].name} too)")
        numbered[number] = path
    if not numbered:
        raise InputError(f"{input_dir}: no numbered images (1{'/1'.join(NUMBERED_SUFFIXES)} …) to pair with "
                         f"{mask_path}")
    masks = mat_variables(mask_path)
    mask_key = _pick_key(masks, mask_key, mask_path, r"nuclei")
    try:
        n_masks = len(_entries(masks[mask_key]))
    except ValueError as err:
        raise InputError(f"{mask_path}: {err}") from err
    expected = set(range(1, n_masks + 1))
    if set(numbered) != expected:
        gaps = sorted(expected - set(numbered))
        extra = sorted(set(numbered) - expected)
        detail = (f"missing {gaps[0]}{' …' if len(gaps) > 1 else ''}" if gaps else
                  f"image {extra[0]} has no cell")
        raise InputError(f"{input_dir}: {len(numbered)} numbered images, but {mask_path} holds {n_masks} nucleus "
                         f"annotations in {mask_key} ({detail}): image k pairs with cell k, so the counts must "
                         "agree")
    # The names a .mat image set would get (isbi_train_000 for image 1): the same sources either way.
    stem = mask_path.stem[: -len(GT_SUFFIX)] if mask_path.stem.endswith(GT_SUFFIX) else mask_path.stem
    names = {number: f"{stem}_{number - 1:03d}" for number in numbered}
    excluded = _normalise_exclusions(exclude)
    known = set(names.values()) | {path.stem for path in numbered.values()}
    unknown = sorted(excluded - known)
    if unknown:
        raise InputError(f"--exclude {', '.join(unknown)}: no such image in {input_dir}")
    return [SourceRef(names[k], numbered[k], mask_path, k - 1, None, mask_key) for k in sorted(numbered)
            if names[k] not in excluded and numbered[k].stem not in excluded]  # sizes: check_truths


def discover(input_path: Path, masks: Path | None = None, exclude: Sequence[str] = (),
             image_key: str | None = None, mask_key: str | None = None, gt_rule: str = "auto",
             max_pixels: int | None = DEFAULT_MAX_PIXELS) -> list[SourceRef]:
    """Sources of a PNG folder, of a .mat pair, or of numbered images with a GT .mat, their ground truth read
    and checked (``check_truths``)."""
    if input_path.suffix.lower() == MAT_SUFFIX:
        refs = discover_mat_pair(input_path, masks, image_key, mask_key, exclude)
    elif input_path.is_file():
        raise InputError(f"{input_path}: --input must be a folder of EDF images or a .mat file")
    elif masks is not None and masks.suffix.lower() == MAT_SUFFIX:
        if not input_path.is_dir():
            raise InputError(f"{input_path}: input folder does not exist")
        refs = discover_numbered_images(input_path, masks, mask_key, exclude)
    else:
        refs = discover_png_pairs(input_path, masks, exclude)
    warn_if_isbi_synthetic(refs)
    return check_truths(refs, gt_rule, max_pixels=max_pixels)


def warn_if_isbi_synthetic(refs: Sequence[SourceRef]) -> None:
    """Warn (once, naming the GT file) when the sources are the ISBI 2014 challenge's synthetic images."""
    for ref in refs:
        if ref.mask_key is not None and ISBI_SYNTHETIC_NUCLEI.fullmatch(ref.mask_key):
            warnings.warn(f"{ref.mask_path}: {ref.mask_key} looks like the ISBI 2014 challenge's synthetic set, "
                          "whose images the challenge composed from the cells of its 16 real EDF fields "
                          "(EDF000-EDF015): a model trained on them has seen every real field's nuclei, so never "
                          "score it on those fields", stacklevel=2)
            return
