"""Streaming tf.data input for the prep tile layout (docs/design.md §3): image tiles → (image in 0..1, one-hot mask).

Only file names are listed and shuffled; tiles are read and decoded inside the pipeline, so memory holds a few
batches, never the dataset. Crops, flips and foreground-biased windows use stateless random ops whose seeds come
from ``seed``: one seed gives the same batches on every run.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import tensorflow as tf

from prep.imageio import IGNORE_LEVEL, IMAGE_SUFFIXES, LUMA_WEIGHTS
from train.config import COLOR_ORDERS, IGNORE_CLASS, Config
from train.windows import WindowOptions, windows_of_tile

TIFF_SUFFIXES = (".tif", ".tiff")  # tf.io.decode_image cannot read TIFF: those go through OpenCV
SHUFFLE_BUFFER = 256
UNKNOWN_COLOUR = IGNORE_CLASS - 1  # the label of a mask pixel whose colour rgb_map lacks (fails the pipeline)
PREFLIGHT_FILES = 8

RgbMap = Mapping[tuple[int, int, int], int]


class DataError(ValueError):
    """A data folder, file or config value that does not fit; the message names it."""


def list_pairs(
    images_dir: Path, masks_dir: Path, mask_file_format: str = ".png", section: str = "train"
) -> tuple[list[str], list[str]]:
    """Sorted image files of ``images_dir`` and their masks (same stem + ``mask_file_format``) in ``masks_dir``."""
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    _require_folder(images_dir, f"[{section}] images_dir")
    _require_folder(masks_dir, f"[{section}] masks_dir")
    mask_suffix = mask_file_format if mask_file_format.startswith(".") else f".{mask_file_format}"

    images = sorted(path for path in _visible_files(images_dir) if path.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(
            f"[{section}] images_dir: {images_dir} holds no images (looked for {', '.join(IMAGE_SUFFIXES)})"
        )
    mask_names = {path.name for path in _visible_files(masks_dir) if path.suffix.lower() == mask_suffix.lower()}
    expected = [image.stem + mask_suffix for image in images]
    missing = [image.name for image, mask in zip(images, expected, strict=True) if mask not in mask_names]
    if missing:
        others = f" ({len(missing)} of {len(images)} images lack a mask)" if len(missing) > 1 else ""
        raise DataError(f"[{section}] masks_dir: no mask for {missing[0]} in {masks_dir}{others}")
    orphans = sorted(mask_names - set(expected))
    if orphans:
        shown = ", ".join(orphans[:5]) + (", …" if len(orphans) > 5 else "")
        warnings.warn(
            f"[{section}] masks_dir: {len(orphans)} mask(s) in {masks_dir} have no image and are ignored: {shown}",
            stacklevel=2,
        )
    return [str(path) for path in images], [str(masks_dir / name) for name in expected]


def dataset_size(image_paths: Sequence[str]) -> int:
    """Number of tiles (one per image path)."""
    return len(image_paths)


def check_masks(mask_paths: Sequence[str], rgb_map: RgbMap, limit: int = PREFLIGHT_FILES) -> None:
    """Eager pre-flight: the first ``limit`` masks hold only colours of ``rgb_map`` (the pipeline checks them all)."""
    known = {_rgb_key(colour) for colour in _validated_colours(rgb_map)}
    for path in list(mask_paths)[:limit]:
        rgb = _read_rgb(path, "mask")
        keys = np.unique(_rgb_keys_numpy(rgb))
        unknown = keys[~np.isin(keys, list(known))]
        if unknown.size:
            key = int(unknown[0])
            value = f"({key >> 16},{(key >> 8) & 255},{key & 255})"
            hint = f" (auto-ignore-line's lines: map it to {IGNORE_CLASS})" * (key == _rgb_key((IGNORE_LEVEL,) * 3))
            raise DataError(f"mask {path}: value {value} is not in [mask] rgb_map {_format_rgb_map(rgb_map)}{hint}")


def check_sizes(
    image_paths: Sequence[str],
    mask_paths: Sequence[str],
    image_size: tuple[int, int],
    crop_size: tuple[int, int] | None = None,
    limit: int = PREFLIGHT_FILES,
) -> None:
    """Eager pre-flight: the first ``limit`` tiles have the configured size (height, width) and masks match images.

    With ``crop_size`` a tile need only be at least the crop; otherwise it must be exactly ``image_size``.
    """
    for image_path, mask_path in list(zip(image_paths, mask_paths, strict=True))[:limit]:
        image_hw = _read_rgb(image_path, "image").shape[:2]
        mask_hw = _read_rgb(mask_path, "mask").shape[:2]
        if mask_hw != image_hw:
            raise DataError(
                f"mask {mask_path}: size {_hw(mask_hw)} differs from its image {image_path} ({_hw(image_hw)})"
            )
        if crop_size is None and tuple(image_hw) != tuple(image_size):
            raise DataError(
                f"image {image_path}: size {_hw(image_hw)} does not fit [model] image_height × image_width = "
                f"{_hw(image_size)}: the config does not fit the dataset"
            )
        if crop_size is not None and (image_hw[0] < crop_size[0] or image_hw[1] < crop_size[1]):
            raise DataError(f"image {image_path}: size {_hw(image_hw)} is smaller than the crop {_hw(crop_size)}")


def make_dataset(
    image_paths: Sequence[str],
    mask_paths: Sequence[str],
    rgb_map: RgbMap,
    num_classes: int,
    image_size: tuple[int, int],
    image_channels: int = 3,
    batch_size: int = 2,
    shuffle: bool = False,
    seed: int | None = 137,
    crop_size: tuple[int, int] | None = None,
    random_flips: bool = False,
    repeat: bool = False,
    color_order: str = "RGB",
    foreground_bias: float = 0.0,
    drop_remainder: bool = False,
    crops_per_tile: int = 1,
    random_rotations: bool = False,
    intensity_jitter: float = 0.0,
    random_scale: float = 0.0,
    random_blur: float = 0.0,
    autotune: bool | None = None,
) -> tf.data.Dataset:
    """Batches of (image float32 (B,H,W,C) in 0..1, one-hot mask float32 (B,H,W,num_classes)).

    ``image_size`` and ``crop_size`` are (height, width). Without a crop every tile must be ``image_size``. The
    window arguments (crop, flips, turns, jitter, zoom, blur, foreground bias) are ``train.windows.WindowOptions``,
    which says what each is for.
    ``seed=None`` gives unseeded randomness and lets parallel
    decoding return elements out of order. ``autotune`` (default: only where a GPU is visible) lets tf.data tune
    its parallelism and buffers while it runs; it never changes the batches.
    """
    windows = WindowOptions(crop_size, crops_per_tile, random_flips, random_rotations, intensity_jitter, random_scale,
                            random_blur, foreground_bias)
    try:
        windows.check(image_size)
    except ValueError as err:
        raise DataError(str(err)) from None
    image_paths, mask_paths = [str(path) for path in image_paths], [str(path) for path in mask_paths]
    _validate_arguments(
        image_paths, mask_paths, num_classes, image_size, image_channels, batch_size, crop_size, color_order,
        foreground_bias,
    )
    colours = _validated_colours(rgb_map)
    class_of_colour = [int(rgb_map[colour]) for colour in colours]
    # A map of greys only (the usual black/white) reads masks as one channel: a third of the work per pixel. An
    # RGB mask pixel decodes to its luminance, which is exactly v for (v,v,v) and strictly between two greys of a
    # black/white map for any other colour, so stray colours are still caught (as their grey value), but for one
    # whose luminance is a third grey of the map (an ignored 128): check_masks compares the first masks as RGB.
    grey_map = all(r == g == b for r, g, b in colours)
    mask_channels = 1 if grey_map else 3
    mask_keys = [r for r, _, _ in colours] if grey_map else [_rgb_key(colour) for colour in colours]
    _validate_classes(rgb_map, num_classes)
    uses_tiff = any(Path(path).suffix.lower() in TIFF_SUFFIXES for path in image_paths + mask_paths)
    decode = _decode_with_opencv if uses_tiff else _decode_with_tensorflow
    rgb_map_text = _format_rgb_map(rgb_map)

    def load(paths: tuple[tf.Tensor, tf.Tensor], draw: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image_path, mask_path = paths
        image = decode(image_path, 3)
        if image_channels == 1:  # one grey for training and prediction (prep.imageio.luma)
            weighted = tf.tensordot(tf.cast(image, tf.float32), tf.constant(LUMA_WEIGHTS, tf.float32), [[2], [0]])
            image = tf.cast(tf.clip_by_value(tf.round(weighted), 0, 255), tf.uint8)[..., None]
        mask = decode(mask_path, mask_channels)
        labels = _mask_to_labels(mask, mask_path, mask_keys, class_of_colour, rgb_map_text)
        image, labels = _check_tile_size(image, labels, image_path, mask_path, image_size, crop_size)
        images, masks = windows_of_tile(image, labels, draw, windows, image_size, seed, image_channels, num_classes,
                                        color_order)
        return (images[0], masks[0]) if crops_per_tile == 1 else (images, masks)

    files = tf.data.Dataset.from_tensor_slices((image_paths, mask_paths))
    if shuffle:
        files = files.shuffle(min(len(image_paths), SHUFFLE_BUFFER), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        files = files.repeat()
    # Per-element seeds: a seeded stream that is redrawn each iteration, so each epoch gets fresh crops and flips
    # while the first pass (and every later one) is reproducible for a given seed.
    draws = tf.data.Dataset.random(seed=None if seed is None else seed + 1, rerandomize_each_iteration=True)
    dataset = tf.data.Dataset.zip(files, draws).map(
        load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=seed is not None
    )
    if crops_per_tile > 1:
        dataset = dataset.unbatch()
        if shuffle:  # windows of one tile arrive together: spread them over batches
            dataset = dataset.shuffle(2 * crops_per_tile * batch_size, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = seed is not None
    if autotune is None:
        autotune = bool(tf.config.list_physical_devices("GPU"))
    # On a CPU-only host the model already keeps every core busy: the tuner's periodic re-optimisation and the
    # parallelism it probes land on the training step (measured: `make bench-train`). Without it, AUTOTUNE
    # stages keep a fixed parallelism of min(16, cores), ample for crops of decoded PNG tiles.
    options.autotune.enabled = autotune
    # The source is a list of names, not files tf.data can shard by: shard by element, without the AUTO fallback.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


# --- graph pieces -----------------------------------------------------------------------------------------------


def _decode_with_tensorflow(path: tf.Tensor, channels: int) -> tf.Tensor:
    # PNG/JPEG/BMP/GIF; 16-bit PNGs are scaled to uint8, alpha dropped, grey replicated when channels == 3.
    image = tf.io.decode_image(tf.io.read_file(path), channels=channels, dtype=tf.uint8, expand_animations=False)
    return tf.ensure_shape(image, (None, None, channels))


def _decode_with_opencv(path: tf.Tensor, channels: int) -> tf.Tensor:
    image = tf.numpy_function(lambda name: _read_opencv(name.decode(), channels), [path], tf.uint8, stateful=False)
    return tf.ensure_shape(image, (None, None, channels))


def _read_opencv(path: str, channels: int) -> np.ndarray:
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    image = cv2.imdecode(np.fromfile(path, np.uint8), flag)
    if image is None:
        raise ValueError(f"{path}: cannot be decoded as an image")
    return image[:, :, None] if channels == 1 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _mask_to_labels(
    mask: tf.Tensor, path: tf.Tensor, colour_keys: list[int], classes: list[int], rgb_map_text: str
) -> tf.Tensor:
    """Class index (H,W) int32 of each mask pixel; a value outside rgb_map fails with the file and the value.

    ``mask`` is (H,W,3) RGB with ``colour_keys`` from _rgb_key, or (H,W,1) grey with the map's grey levels. One
    lookup per pixel (a 256-entry table for grey, a search in the sorted keys for RGB) instead of comparing every
    pixel with every colour; the error message is only built for a mask that fails."""
    channels = mask.shape[-1]
    if channels == 1:
        table = np.full(256, UNKNOWN_COLOUR, np.int32)
        table[colour_keys] = classes
        labels = tf.gather(tf.constant(table), tf.cast(mask[..., 0], tf.int32))
    else:
        order = np.argsort(colour_keys)
        sorted_keys = tf.constant(np.asarray(colour_keys, np.int32)[order])
        mask32 = tf.cast(mask, tf.int32)
        keys = mask32[..., 0] * 65536 + mask32[..., 1] * 256 + mask32[..., 2]
        slot = tf.minimum(tf.searchsorted(sorted_keys, tf.reshape(keys, [-1])), len(colour_keys) - 1)
        slot = tf.reshape(slot, tf.shape(keys))
        found = tf.equal(tf.gather(sorted_keys, slot), keys)
        labels = tf.where(found, tf.gather(tf.constant(np.asarray(classes, np.int32)[order]), slot), UNKNOWN_COLOUR)

    def fail() -> tf.Tensor:
        first_unknown = tf.argmin(tf.reshape(labels, [-1]))  # classes are ≥ IGNORE_CLASS, unknown pixels below
        pixel = tf.reshape(mask, [-1, channels])[first_unknown]
        value = tf.strings.reduce_join(tf.strings.as_string(pixel), separator=",")
        if channels == 1:
            parts = [": grey value ", value, " is not in [mask] rgb_map ", rgb_map_text,
                     " (with a map of greys, masks are read as grey: a colour shows as its luminance)"]
        else:
            parts = [": value (", value, ") is not in [mask] rgb_map ", rgb_map_text]
        assertion = tf.debugging.Assert(False, [tf.strings.join(["mask ", path, *parts])])
        with tf.control_dependencies([assertion]):
            return tf.identity(labels)

    return tf.cond(tf.reduce_min(labels) >= IGNORE_CLASS, lambda: labels, fail)


def _check_tile_size(
    image: tf.Tensor,
    labels: tf.Tensor,
    image_path: tf.Tensor,
    mask_path: tf.Tensor,
    image_size: tuple[int, int],
    crop_size: tuple[int, int] | None,
) -> tuple[tf.Tensor, tf.Tensor]:
    image_hw, mask_hw = tf.shape(image)[:2], tf.shape(labels)
    same = tf.debugging.Assert(
        tf.reduce_all(tf.equal(image_hw, mask_hw)),
        [tf.strings.join(["mask ", mask_path, ": size ", _hw_text(mask_hw), " differs from its image ", image_path,
                          " (", _hw_text(image_hw), ")"])],
    )
    if crop_size is None:
        fits = tf.reduce_all(tf.equal(image_hw, image_size))
        expected = f" does not fit [model] image_height × image_width = {_hw(image_size)}: the config does not fit"
        expected += " the dataset"
    else:
        fits = tf.reduce_all(tf.greater_equal(image_hw, crop_size))
        expected = f" is smaller than the crop {_hw(crop_size)}"
    size = tf.debugging.Assert(fits, [tf.strings.join(["image ", image_path, ": size ", _hw_text(image_hw), expected])])
    with tf.control_dependencies([same, size]):
        return tf.identity(image), tf.identity(labels)


def _hw_text(hw: tf.Tensor) -> tf.Tensor:
    return tf.strings.reduce_join(tf.strings.as_string(hw), separator="×")


# --- eager helpers ----------------------------------------------------------------------------------------------


def _require_folder(folder: Path, key: str) -> None:
    if not folder.is_dir():
        raise DataError(f"{key}: {folder} " + ("is not a folder" if folder.exists() else "does not exist"))


def _visible_files(folder: Path) -> list[Path]:
    return [path for path in folder.iterdir() if path.is_file() and not path.name.startswith(".")]


def _read_rgb(path: str, what: str) -> np.ndarray:
    """8-bit RGB as the pipeline sees it (OpenCV scales 16-bit, drops alpha and replicates grey the same way)."""
    try:
        bgr = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
    except OSError as error:
        raise DataError(f"{what} {path}: cannot be read ({error.strerror or error})") from error
    if bgr is None:
        raise DataError(f"{what} {path}: cannot be decoded as an image")
    return bgr[:, :, ::-1]


def _rgb_key(colour: Sequence[int]) -> int:
    return (int(colour[0]) << 16) | (int(colour[1]) << 8) | int(colour[2])


def _rgb_keys_numpy(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _validated_colours(rgb_map: RgbMap) -> list[tuple[int, int, int]]:
    if not rgb_map:
        raise DataError("[mask] rgb_map: is empty; expected {(r,g,b): class, ...}")
    for colour in rgb_map:
        is_triple = isinstance(colour, tuple) and len(colour) == 3
        if not (is_triple and all(isinstance(v, (int, np.integer)) and 0 <= v <= 255 for v in colour)):
            raise DataError(f"[mask] rgb_map: key {colour!r} is not an (r,g,b) triple of integers 0..255")
    return list(rgb_map)


def _validate_classes(rgb_map: RgbMap, num_classes: int) -> None:
    for colour, index in rgb_map.items():
        if not (isinstance(index, (int, np.integer)) and (0 <= index < num_classes or index == IGNORE_CLASS)):
            raise DataError(
                f"[mask] rgb_map: class {index!r} of {colour} is outside 0..{num_classes - 1} "
                f"([model] num_classes = {num_classes}) and is not {IGNORE_CLASS} (ignored)"
            )


def _validate_arguments(
    image_paths: list[str],
    mask_paths: list[str],
    num_classes: int,
    image_size: tuple[int, int],
    image_channels: int,
    batch_size: int,
    crop_size: tuple[int, int] | None,
    color_order: str,
    foreground_bias: float,
) -> None:
    if not image_paths:
        raise DataError("no image tiles to read")
    if len(image_paths) != len(mask_paths):
        raise DataError(f"{len(image_paths)} images but {len(mask_paths)} masks")
    if num_classes < 2:  # the one range of the key, as train.config's schema has it
        raise DataError(f"[model] num_classes: {num_classes} must be at least 2 (background and nucleus)")
    if image_channels not in (1, 3):
        raise DataError(f"[model] image_channels: {image_channels} must be 1 or 3")
    if batch_size < 1:
        raise DataError(f"[train] batch_size: {batch_size} must be at least 1")
    if color_order not in COLOR_ORDERS:
        raise DataError(f"[image] color_order: {color_order!r} must be one of {', '.join(COLOR_ORDERS)}")
    if not 0.0 <= foreground_bias <= 1.0:
        raise DataError(f"foreground_bias: {foreground_bias} must be in [0, 1]")
    for name, size in (("[model] image_height, image_width", image_size), ("crop size", crop_size)):
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise DataError(f"{name}: {size} must be two positive integers (height, width)")


def _format_rgb_map(rgb_map: RgbMap) -> str:
    return "{" + ", ".join(f"({r},{g},{b}): {index}" for (r, g, b), index in rgb_map.items()) + "}"


def _hw(size: Sequence[int]) -> str:
    return f"{size[0]}×{size[1]}"


# ---------------------------------------------------------------------------------------------- config → datasets

def pairs(config: Config, section: str):
    part = getattr(config, section)
    return list_pairs(part.images_dir, part.masks_dir, config.mask.mask_file_format, section=section)


def tile_dataset_options(config: Config) -> dict:
    """How the config turns tiles into model inputs: the make_dataset arguments every split shares."""
    return {"rgb_map": config.mask.rgb_map, "num_classes": config.model.num_classes,
            "image_size": config.image_size, "image_channels": config.model.image_channels,
            "color_order": config.image.color_order}


def training_dataset_options(config: Config) -> dict:
    """The make_dataset arguments of the training split: shared ones, plus crops, sampling and augmentation."""
    t = config.train
    return {**tile_dataset_options(config), "batch_size": t.batch_size, "shuffle": True, "seed": t.seed,
            "crop_size": t.crop_size, "random_flips": t.random_flips, "foreground_bias": t.foreground_bias,
            "random_rotations": t.random_rotations, "intensity_jitter": t.intensity_jitter,
            "random_scale": t.random_scale, "random_blur": t.random_blur,
            "crops_per_tile": t.crops_per_tile, "repeat": t.steps_per_epoch is not None}


def datasets(config: Config, with_validation: bool = True):
    """(train dataset, valid dataset or None, train pairs, valid pairs)."""
    t = config.train
    common = tile_dataset_options(config)
    train_images, train_masks = pairs(config, "train")
    check_masks(train_masks, config.mask.rgb_map)
    check_sizes(train_images, train_masks, config.image_size, crop_size=t.crop_size)
    train_ds = make_dataset(train_images, train_masks, **training_dataset_options(config))
    valid_ds, valid_pairs = None, ([], [])
    if with_validation:
        valid_pairs = pairs(config, "valid")
        check_masks(valid_pairs[1], config.mask.rgb_map)
        check_sizes(*valid_pairs, config.image_size)
        valid_ds = make_dataset(*valid_pairs, batch_size=t.batch_size, shuffle=False, seed=t.seed, **common)
        if t.validation_steps is not None:  # the same first batches every epoch, so epochs compare like with like
            valid_ds = valid_ds.take(t.validation_steps)
    return train_ds, valid_ds, (train_images, train_masks), valid_pairs


def evaluation_dataset(config: Config) -> tuple[list[str], tf.data.Dataset]:
    """(image paths, dataset) of the [test] split, checked first: the tiles evaluate scores, in file order, through
    the same pipeline as validation, so its numbers compare with the curves."""
    images, masks = pairs(config, "test")
    check_masks(masks, config.mask.rgb_map)
    check_sizes(images, masks, config.image_size)
    return images, make_dataset(images, masks, batch_size=config.train.batch_size, shuffle=False,
                                **tile_dataset_options(config))


def montage_tiles(config: Config, image_paths: Sequence[str], mask_paths: Sequence[str]):
    """(inputs, class maps, RGB uint8 pictures) of a few tiles, read once through the training pipeline: what
    the epoch montage predicts and shows (an ignored pixel, all-zero one-hot, is IGNORE_CLASS in the map)."""
    batch = make_dataset(image_paths, mask_paths, batch_size=len(image_paths), shuffle=False,
                         **tile_dataset_options(config))
    inputs, truths = (tensor.numpy() for tensor in next(iter(batch)))
    bgr = config.image.color_order == "BGR" and inputs.shape[-1] == 3
    display = np.rint((inputs[..., ::-1] if bgr else inputs) * 255).astype(np.uint8)
    return inputs, np.where(truths.max(axis=-1) > 0, np.argmax(truths, axis=-1), IGNORE_CLASS), display  # 0-hot
