"""Streaming tf.data input for the prep tile layout (DESIGN.md §3): image tiles → (image in 0..1, one-hot mask).

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

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
TIFF_SUFFIXES = (".tif", ".tiff")  # tf.io.decode_image cannot read TIFF: those go through OpenCV
SHUFFLE_BUFFER = 256
PREFLIGHT_FILES = 8
COLOR_ORDERS = ("RGB", "BGR")

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
            raise DataError(f"mask {path}: value {value} is not in [mask] rgb_map {_format_rgb_map(rgb_map)}")


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
) -> tf.data.Dataset:
    """Batches of (image float32 (B,H,W,C) in 0..1, one-hot mask float32 (B,H,W,num_classes)).

    ``image_size`` and ``crop_size`` are (height, width). Without a crop every tile must be ``image_size``; with
    one, each tile yields one random ``crop_size`` window (the same for image and mask) that, with probability
    ``foreground_bias``, contains a random foreground (class > 0) pixel. ``crops_per_tile`` > 1 takes that many
    windows from each decoded tile (decoding a 512² PNG pair costs far more than training on a 128² crop of it)
    and mixes them through a small shuffle buffer. ``random_rotations`` turns each window by a random multiple of
    90° (square windows only); with flips that covers all eight symmetries of the square, none of which a smear
    prefers. ``intensity_jitter`` = j > 0 changes each window's gamma by a factor in [e^-j, e^j], its contrast by
    one in [1-j, 1+j] and its brightness by up to ±j/4 (the mask is untouched): stains, focus and exposure differ
    between slides, and a model that has seen a handful of sources must not key on their absolute grey levels.
    ``random_scale`` = s > 0 zooms each window by a factor drawn log-uniformly in [1/(1+s), 1+s] (a window of
    crop/factor pixels, resized to the crop: bilinear for the image, nearest for the mask): nucleus size differs
    between sources and slide preparations, and a model trained on a few sources must not learn one size.
    ``seed=None`` gives unseeded randomness and lets parallel
    decoding return elements out of order.
    """
    if crops_per_tile < 1 or (crops_per_tile > 1 and crop_size is None):
        raise DataError(f"[train] crops_per_tile = {crops_per_tile}: expected 1, or more with a crop_size")
    window = crop_size or image_size
    if random_rotations and window[0] != window[1]:
        raise DataError(f"[train] random_rotations: needs square windows, got {_hw(window)} (set a square crop_size)")
    if not 0.0 <= intensity_jitter < 1.0:
        raise DataError(f"[train] intensity_jitter = {intensity_jitter}: expected a value in [0, 1)")
    if not 0.0 <= random_scale < 1.0:
        raise DataError(f"[train] random_scale = {random_scale}: expected a value in [0, 1)")
    if random_scale > 0 and crop_size is None:
        raise DataError("[train] random_scale: needs a crop_size (the zoomed window is cut from the tile)")
    image_paths, mask_paths = [str(path) for path in image_paths], [str(path) for path in mask_paths]
    _validate_arguments(
        image_paths, mask_paths, num_classes, image_size, image_channels, batch_size, crop_size, color_order,
        foreground_bias,
    )
    colours = _validated_colours(rgb_map)
    class_of_colour = [int(rgb_map[colour]) for colour in colours]
    # A map of greys only (the usual black/white) reads masks as one channel: a third of the work per pixel. An
    # RGB mask pixel decodes to its luminance, which is exactly v for (v,v,v) and strictly between two greys of a
    # black/white map for any other colour, so stray colours are still caught (as their grey value).
    grey_map = all(r == g == b for r, g, b in colours)
    mask_channels = 1 if grey_map else 3
    mask_keys = [r for r, _, _ in colours] if grey_map else [_rgb_key(colour) for colour in colours]
    _validate_classes(rgb_map, num_classes)
    uses_tiff = any(Path(path).suffix.lower() in TIFF_SUFFIXES for path in image_paths + mask_paths)
    decode = _decode_with_opencv if uses_tiff else _decode_with_tensorflow
    rgb_map_text = _format_rgb_map(rgb_map)

    def load(paths: tuple[tf.Tensor, tf.Tensor], draw: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image_path, mask_path = paths
        image = decode(image_path, image_channels)
        mask = decode(mask_path, mask_channels)
        labels = _mask_to_labels(mask, mask_path, mask_keys, class_of_colour, rgb_map_text)
        image, labels = _check_tile_size(image, labels, image_path, mask_path, image_size, crop_size)
        # Foreground pixels are listed once per tile, not once per window.
        foreground = tf.where(labels > 0) if crop_size is not None and foreground_bias > 0 else None
        if crops_per_tile == 1:
            return sample(image, labels, foreground, draw, 0)
        windows = [sample(image, labels, foreground, draw, k) for k in range(crops_per_tile)]
        return tf.stack([w[0] for w in windows]), tf.stack([w[1] for w in windows])

    def sample(image: tf.Tensor, labels: tf.Tensor, foreground, draw: tf.Tensor, k: int) -> tuple[tf.Tensor, tf.Tensor]:
        # One stateless draw per window: (foreground?, which pixel, window y, window x, flip v, flip h, quarter
        # turns, gamma, contrast, brightness, zoom).
        uniforms = tf.random.stateless_uniform([11], seed=tf.stack([tf.constant((seed or 0) + k, tf.int64), draw]))
        if crop_size is not None:
            zoomed = random_scale > 0
            window = _zoomed_window(crop_size, tf.shape(labels), uniforms[10], random_scale) if zoomed else crop_size
            image, labels = _random_crop(image, labels, window, uniforms, foreground_bias, foreground)
            if zoomed:
                image = tf.image.resize(image, crop_size, method="bilinear", antialias=True)  # float 0..255
                labels = tf.image.resize(labels[..., None], crop_size, method="nearest")[..., 0]
        if random_flips:
            image, labels = _random_flips(image, labels, uniforms)
        if random_rotations:
            image, labels = _random_quarter_turns(image, labels, uniforms[6])
        if color_order == "BGR" and image_channels == 3:
            image = tf.reverse(image, axis=[-1])
        height, width = crop_size or image_size
        image = tf.cast(image, tf.float32) / 255.0
        if intensity_jitter > 0:
            image = _jitter_intensity(image, uniforms[7:10], intensity_jitter)
        image = tf.ensure_shape(image, (height, width, image_channels))
        mask = tf.ensure_shape(tf.one_hot(labels, num_classes, dtype=tf.float32), (height, width, num_classes))
        return image, mask

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

    ``mask`` is (H,W,3) RGB with ``colour_keys`` from _rgb_key, or (H,W,1) grey with the map's grey levels."""
    channels = mask.shape[-1]
    mask = tf.cast(mask, tf.int32)
    keys = mask[..., 0] if channels == 1 else mask[..., 0] * 65536 + mask[..., 1] * 256 + mask[..., 2]
    matches = tf.equal(keys[..., None], tf.constant(colour_keys, tf.int32))
    known = tf.reduce_any(matches, axis=-1)
    first_unknown = tf.argmin(tf.cast(tf.reshape(known, [-1]), tf.int32))
    value = tf.strings.reduce_join(tf.strings.as_string(tf.reshape(mask, [-1, channels])[first_unknown]),
                                   separator=",")
    if channels == 1:
        parts = [": grey value ", value, " is not in [mask] rgb_map ", rgb_map_text,
                 " (with a map of greys, masks are read as grey: a colour shows as its luminance)"]
    else:
        parts = [": value (", value, ") is not in [mask] rgb_map ", rgb_map_text]
    message = tf.strings.join(["mask ", path, *parts])
    assertion = tf.debugging.Assert(tf.reduce_all(known), [message])
    with tf.control_dependencies([assertion]):
        return tf.gather(tf.constant(classes, tf.int32), tf.argmax(matches, axis=-1, output_type=tf.int32))


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


def _zoomed_window(crop_size: tuple[int, int], tile_shape: tf.Tensor, uniform: tf.Tensor, scale: float) -> tf.Tensor:
    """(height, width) of the tile window that a zoom factor in [1/(1+scale), 1+scale] (log-uniform) turns into
    ``crop_size``; never larger than the tile."""
    log_range = tf.math.log(1.0 + scale)
    factor = tf.exp((2.0 * uniform - 1.0) * log_range)
    window = tf.cast(tf.round(tf.constant(crop_size, tf.float32) / factor), tf.int32)
    return tf.minimum(tf.maximum(window, 1), tile_shape[:2])


def _random_crop(
    image: tf.Tensor, labels: tf.Tensor, crop_size, uniforms: tf.Tensor, foreground_bias: float,
    foreground: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """One window for image and mask; with probability ``foreground_bias`` it holds a random foreground pixel
    (``foreground``: the tile's tf.where(labels > 0), when already computed). ``crop_size`` may be a tensor."""
    crop_height, crop_width = crop_size[0], crop_size[1]
    shape = tf.shape(labels)
    last_y, last_x = shape[0] - crop_height, shape[1] - crop_width

    def uniform_window() -> tuple[tf.Tensor, tf.Tensor]:
        return _pick(uniforms[2], 0, last_y), _pick(uniforms[3], 0, last_x)

    if foreground_bias > 0:
        if foreground is None:
            foreground = tf.where(labels > 0)
        count = tf.shape(foreground)[0]

        def window_around_foreground() -> tuple[tf.Tensor, tf.Tensor]:
            pixel = tf.cast(foreground[_pick(uniforms[1], 0, count - 1)], tf.int32)
            # Top-left corners whose window covers the pixel and stays inside the tile.
            y = _pick(uniforms[2], tf.maximum(0, pixel[0] - crop_height + 1), tf.minimum(pixel[0], last_y))
            x = _pick(uniforms[3], tf.maximum(0, pixel[1] - crop_width + 1), tf.minimum(pixel[1], last_x))
            return y, x

        y, x = tf.cond((uniforms[0] < foreground_bias) & (count > 0), window_around_foreground, uniform_window)
    else:
        y, x = uniform_window()
    image = tf.slice(image, [y, x, 0], [crop_height, crop_width, -1])
    labels = tf.slice(labels, [y, x], [crop_height, crop_width])
    return image, labels


def _random_flips(image: tf.Tensor, labels: tf.Tensor, uniforms: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    for axis, draw in ((0, uniforms[4]), (1, uniforms[5])):
        flip = draw < 0.5  # a scalar condition: tf.where picks the whole tensor
        image = tf.where(flip, tf.reverse(image, [axis]), image)
        labels = tf.where(flip, tf.reverse(labels, [axis]), labels)
    return image, labels


def _random_quarter_turns(image: tf.Tensor, labels: tf.Tensor, uniform: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    turns = tf.minimum(tf.cast(uniform * 4, tf.int32), 3)
    return tf.image.rot90(image, turns), tf.image.rot90(labels[..., None], turns)[..., 0]


def _jitter_intensity(image: tf.Tensor, uniforms: tf.Tensor, jitter: float) -> tf.Tensor:
    """Gamma, then contrast about the window's mean, then brightness, on an image in 0..1; clipped to 0..1."""
    signed = 2.0 * uniforms - 1.0  # three draws in [-1, 1)
    image = tf.pow(tf.maximum(image, 1e-6), tf.exp(jitter * signed[0]))
    mean = tf.reduce_mean(image)
    image = (image - mean) * (1.0 + jitter * signed[1]) + mean + 0.25 * jitter * signed[2]
    return tf.clip_by_value(image, 0.0, 1.0)


def _pick(uniform: tf.Tensor, low: tf.Tensor | int, high: tf.Tensor | int) -> tf.Tensor:
    """An integer in [low, high] from a uniform draw in [0, 1)."""
    low, high = tf.cast(low, tf.int32), tf.cast(high, tf.int32)
    offset = tf.cast(tf.floor(uniform * tf.cast(high - low + 1, tf.float32)), tf.int32)
    return low + tf.minimum(offset, high - low)  # float rounding must never step past ``high``


def _hw_text(hw: tf.Tensor) -> tf.Tensor:
    return tf.strings.reduce_join(tf.strings.as_string(hw), separator="×")


# --- eager helpers ----------------------------------------------------------------------------------------------


def _require_folder(folder: Path, key: str) -> None:
    if not folder.exists():
        raise DataError(f"{key}: {folder} does not exist")
    if not folder.is_dir():
        raise DataError(f"{key}: {folder} is not a folder")


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
        if not (isinstance(index, (int, np.integer)) and 0 <= index < num_classes):
            raise DataError(
                f"[mask] rgb_map: class {index!r} of {colour} is outside 0..{num_classes - 1} "
                f"([model] num_classes = {num_classes})"
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
    if num_classes < 1:
        raise DataError(f"[model] num_classes: {num_classes} must be at least 1")
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
