"""In-graph window augmentation of one decoded tile: crops (foreground-biased), flips, quarter turns, zoom, blur
and intensity jitter, each drawn from stateless seeds, taking one validated ``WindowOptions``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import tensorflow as tf

from train.config import MAX_BLUR_SIGMA


@dataclass(frozen=True)
class WindowOptions:
    """How a training tile becomes windows.

    Each tile yields one random ``crop_size`` window (the same for image and mask) that, with probability
    ``foreground_bias``, contains a random foreground (class > 0) pixel. ``crops_per_tile`` > 1 takes that many
    windows from each decoded tile (decoding a 512² PNG pair costs far more than training on a 128² crop of it).
    ``random_rotations`` turns each window by a random multiple of 90° (square windows only); with flips that
    covers all eight symmetries of the square, none of which a smear prefers. ``intensity_jitter`` = j > 0 changes
    each window's gamma by a factor in [e^-j, e^j], its contrast by one in [1-j, 1+j] and its brightness by up to
    ±j/4 (the mask is untouched): stains, focus and exposure differ between slides, and a model that has seen a
    handful of sources must not key on their absolute grey levels. ``random_scale`` = s > 0 zooms each window by a
    factor drawn log-uniformly in [1/(1+s), 1+s] (bilinear for the image, nearest for the mask): nucleus size
    differs between sources and preparations. ``random_blur`` = b > 0 blurs each window with a Gaussian of
    standard deviation drawn uniformly in [0, b] pixels (borders reflected): an EDF image is sharp only where its
    focus stack found a plane, and nuclei inside thick clumps come out soft and pale.
    """

    crop_size: tuple[int, int] | None = None  # (height, width); None: the whole tile
    crops_per_tile: int = 1
    random_flips: bool = False
    random_rotations: bool = False
    intensity_jitter: float = 0.0
    random_scale: float = 0.0
    random_blur: float = 0.0
    foreground_bias: float = 0.0

    def check(self, image_size: tuple[int, int]) -> None:
        """Raise ValueError, naming the [train] key, for options that cannot work on tiles of ``image_size``."""
        crop_size, crops_per_tile = self.crop_size, self.crops_per_tile
        random_rotations, intensity_jitter = self.random_rotations, self.intensity_jitter
        random_scale, random_blur = self.random_scale, self.random_blur
        if crops_per_tile < 1 or (crops_per_tile > 1 and crop_size is None):
            raise ValueError(f"[train] crops_per_tile = {crops_per_tile}: expected 1, or more with a crop_size")
        window = crop_size or image_size
        if random_rotations and window[0] != window[1]:
            raise ValueError(f"[train] random_rotations: needs square windows, got {hw(window)} "
                             "(set a square crop_size)")
        if not 0.0 <= intensity_jitter < 1.0:
            raise ValueError(f"[train] intensity_jitter = {intensity_jitter}: expected a value in [0, 1)")
        if not 0.0 <= random_scale < 1.0:
            raise ValueError(f"[train] random_scale = {random_scale}: expected a value in [0, 1)")
        if not 0.0 <= random_blur <= MAX_BLUR_SIGMA:
            raise ValueError(f"[train] random_blur = {random_blur}: expected a value in [0, {MAX_BLUR_SIGMA:g}] "
                             "(pixels)")
        if random_blur > 0 and min(window) <= blur_radius(random_blur):
            raise ValueError(f"[train] random_blur = {random_blur}: windows of {hw(window)} are too small to blur "
                             f"(need more than {blur_radius(random_blur)} px a side)")
        if random_scale > 0 and crop_size is None:
            raise ValueError("[train] random_scale: needs a crop_size (the zoomed window is cut from the tile)")
        if not 0.0 <= self.foreground_bias <= 1.0:
            raise ValueError(f"[train] foreground_bias = {self.foreground_bias}: expected a value in [0, 1]")


def hw(size) -> str:
    return f"{size[0]}×{size[1]}"


def windows_of_tile(image: tf.Tensor, labels: tf.Tensor, draw: tf.Tensor, options: WindowOptions,
                    image_size: tuple[int, int], seed: int | None, image_channels: int, num_classes: int,
                    color_order: str) -> tuple[tf.Tensor, tf.Tensor]:
    """The (K, h, w, C) float 0..1 windows of one tile and their (K, h, w, num_classes) one-hot masks."""
    crop_size, crops_per_tile = options.crop_size, options.crops_per_tile
    random_scale, random_blur, foreground_bias = options.random_scale, options.random_blur, options.foreground_bias
    random_flips, random_rotations, intensity_jitter = (options.random_flips, options.random_rotations,
                                                        options.intensity_jitter)
    # One stateless draw per window k: (foreground?, which pixel, window y, window x, flip v, flip h, quarter
    # turns, gamma, contrast, brightness, zoom[, blur]). The blur draw exists only when blurring, so every other
    # configuration keeps the windows it always had.
    draws_per_window = 12 if random_blur > 0 else 11
    uniforms = tf.stack([
        tf.random.stateless_uniform([draws_per_window],
                                    seed=tf.stack([tf.constant((seed or 0) + k, tf.int64), draw]))
        for k in range(crops_per_tile)
    ])
    zoomed = random_scale > 0
    if crop_size is None:
        sizes = tf.tile(tf.constant([image_size], tf.int32), [crops_per_tile, 1])
        corners = tf.zeros_like(sizes)
    else:
        sizes = (zoomed_windows(crop_size, tf.shape(labels), uniforms[:, 10], random_scale) if zoomed
                 else tf.tile(tf.constant([crop_size], tf.int32), [crops_per_tile, 1]))
        # Foreground pixels are listed once per tile, not once per window.
        foreground = tf.where(labels > 0) if foreground_bias > 0 else None
        corners = window_corners(tf.shape(labels), sizes, uniforms, foreground_bias, foreground)
    flip_rows, flip_columns, transpose = orientations(uniforms, random_flips, random_rotations)
    windows = [
        cut_window(image, labels, corners[k], sizes[k], crop_size if zoomed else None, flip_rows[k],
                   flip_columns[k], transpose[k] if random_rotations else None)
        for k in range(crops_per_tile)
    ]
    images, labels = tf.stack([w[0] for w in windows]), tf.stack([w[1] for w in windows])
    # Per-pixel work runs once on the tile's (K, h, w, ·) stack of windows.
    if color_order == "BGR" and image_channels == 3:
        images = tf.reverse(images, axis=[-1])
    height, width = crop_size or image_size
    images = tf.cast(images, tf.float32) / 255.0
    if random_blur > 0:
        images = gaussian_blur(images, random_blur * uniforms[:, 11], random_blur)
    if intensity_jitter > 0:
        images = jitter_intensity(images, uniforms[:, 7:10], intensity_jitter)
    images = tf.ensure_shape(images, (crops_per_tile, height, width, image_channels))
    masks = tf.one_hot(labels, num_classes, dtype=tf.float32)
    return images, tf.ensure_shape(masks, (crops_per_tile, height, width, num_classes))


def zoomed_windows(
    crop_size: tuple[int, int], tile_shape: tf.Tensor, uniforms: tf.Tensor, scale: float
) -> tf.Tensor:
    """(K, 2) heights and widths of the tile windows that zoom factors in [1/(1+scale), 1+scale] (log-uniform, one
    per draw in ``uniforms``) turn into ``crop_size``; never larger than the tile."""
    log_range = tf.math.log(1.0 + scale)
    factors = tf.exp((2.0 * uniforms - 1.0) * log_range)
    windows = tf.cast(tf.round(tf.constant(crop_size, tf.float32)[None] / factors[:, None]), tf.int32)
    return tf.minimum(tf.maximum(windows, 1), tile_shape[None, :2])


def window_corners(
    tile_shape: tf.Tensor, sizes: tf.Tensor, uniforms: tf.Tensor, foreground_bias: float,
    foreground: tf.Tensor | None,
) -> tf.Tensor:
    """(K, 2) top-left corners of K windows of ``sizes`` inside the tile. With probability ``foreground_bias`` a
    window holds a random pixel of ``foreground`` (the tile's tf.where(labels > 0)); a tile without foreground
    gets uniform windows."""
    heights, widths = sizes[:, 0], sizes[:, 1]
    last_y, last_x = tile_shape[0] - heights, tile_shape[1] - widths
    y, x = pick(uniforms[:, 2], 0, last_y), pick(uniforms[:, 3], 0, last_x)
    if foreground_bias > 0:
        count = tf.shape(foreground)[0]
        # A dummy row keeps the gather valid on a tile without foreground; those windows stay uniform.
        candidates = tf.concat([tf.cast(foreground, tf.int32), tf.zeros([1, 2], tf.int32)], axis=0)
        pixels = tf.gather(candidates, pick(uniforms[:, 1], 0, tf.maximum(count - 1, 0)))
        # Top-left corners whose window covers the pixel and stays inside the tile.
        around_y = pick(uniforms[:, 2], tf.maximum(0, pixels[:, 0] - heights + 1), tf.minimum(pixels[:, 0], last_y))
        around_x = pick(uniforms[:, 3], tf.maximum(0, pixels[:, 1] - widths + 1), tf.minimum(pixels[:, 1], last_x))
        around = (uniforms[:, 0] < foreground_bias) & (count > 0)
        y, x = tf.where(around, around_y, y), tf.where(around, around_x, x)
    return tf.stack([y, x], axis=1)


def orientations(uniforms: tf.Tensor, flips: bool, quarter_turns: bool) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Per window: flip vertically and horizontally (draws 4, 5), then turn by a random multiple of 90° (draw 6),
    written as (flip the window's rows?, flip its columns?, then transpose?) so that one reverse along the drawn
    axes and one transpose apply any of the eight: a quarter turn is a flip and a transpose (tf.image.rot90: k = 1
    flips the columns, k = 3 the rows, before transposing; k = 2 flips both)."""
    count = tf.shape(uniforms)[0]
    no = tf.zeros([count], tf.bool)
    flip_v, flip_h = (uniforms[:, 4] < 0.5, uniforms[:, 5] < 0.5) if flips else (no, no)
    if not quarter_turns:
        return flip_v, flip_h, no
    turns = tf.minimum(tf.cast(uniforms[:, 6] * 4, tf.int32), 3)
    return flip_v != (turns >= 2), flip_h != ((turns == 1) | (turns == 2)), turns % 2 == 1


def cut_window(
    image: tf.Tensor, labels: tf.Tensor, corner: tf.Tensor, size: tf.Tensor, resize_to: tuple[int, int] | None,
    flip_rows: tf.Tensor, flip_columns: tf.Tensor, transpose: tf.Tensor | None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """One window of image and labels: cut at ``corner``, resized to ``resize_to`` if given (bilinear image, as
    float 0..255; nearest labels), then flipped and transposed as drawn: one reverse (along the drawn axes, maybe
    none) and one transpose (by a drawn permutation), instead of computing both outcomes and picking one."""
    image = tf.slice(image, tf.concat([corner, [0]], 0), tf.concat([size, [-1]], 0))
    labels = tf.slice(labels, corner, size)
    if resize_to is not None:
        image = tf.image.resize(image, resize_to, method="bilinear", antialias=True)
        labels = tf.image.resize(labels[..., None], resize_to, method="nearest")[..., 0]
    axes = tf.boolean_mask(tf.constant([0, 1]), tf.stack([flip_rows, flip_columns]))
    image, labels = tf.reverse(image, axes), tf.reverse(labels, axes)
    if transpose is not None:
        order = tf.where(transpose, tf.constant([1, 0]), tf.constant([0, 1]))
        image, labels = tf.transpose(image, tf.concat([order, [2]], 0)), tf.transpose(labels, order)
    return image, labels


def jitter_intensity(images: tf.Tensor, uniforms: tf.Tensor, jitter: float) -> tf.Tensor:
    """Per window of (K, h, w, C) images in 0..1: gamma, then contrast about the window's mean, then brightness
    (three draws per window in ``uniforms``, (K, 3)); clipped to 0..1."""
    signed = tf.reshape(2.0 * uniforms - 1.0, [-1, 1, 1, 1, 3])  # draws in [-1, 1)
    images = tf.pow(tf.maximum(images, 1e-6), tf.exp(jitter * signed[..., 0]))
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    images = (images - mean) * (1.0 + jitter * signed[..., 1]) + mean + 0.25 * jitter * signed[..., 2]
    return tf.clip_by_value(images, 0.0, 1.0)


def blur_radius(max_sigma: float) -> int:
    """Half-width of the Gaussian kernel: 3 standard deviations (reflect padding needs windows wider than it)."""
    return max(1, math.ceil(3 * max_sigma))


def gaussian_blur(images: tf.Tensor, sigmas: tf.Tensor, max_sigma: float) -> tf.Tensor:
    """Each of (K, h, w, C) images blurred by a Gaussian of its own standard deviation ``sigmas[k]`` (pixels; 0
    leaves it unchanged), borders reflected. The K·C planes become the channels of one depthwise convolution, so
    K different kernels cost one separable pass."""
    radius = blur_radius(max_sigma)
    shape = tf.shape(images)
    count, channels = shape[0], shape[3]
    planes = tf.reshape(tf.transpose(images, [1, 2, 0, 3]), [1, shape[1], shape[2], count * channels])
    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
    # sigma -> 0 gives exp(-inf) = 0 off centre: the identity kernel, no special case.
    weights = tf.exp(-0.5 * tf.square(offsets[None, :] / tf.maximum(sigmas[:, None], 1e-3)))
    weights = weights / tf.reduce_sum(weights, axis=1, keepdims=True)  # (K, 2r+1)
    weights = tf.reshape(tf.repeat(weights, channels, axis=0), [count * channels, 2 * radius + 1])
    kernel = tf.transpose(weights)[:, None, :, None]  # (2r+1, 1, K·C, 1): down the rows
    planes = tf.pad(planes, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    planes = tf.nn.depthwise_conv2d(planes, kernel, [1, 1, 1, 1], "VALID")
    planes = tf.nn.depthwise_conv2d(planes, tf.transpose(kernel, [1, 0, 2, 3]), [1, 1, 1, 1], "VALID")
    return tf.transpose(tf.reshape(planes, [shape[1], shape[2], count, channels]), [2, 0, 1, 3])


def pick(uniform: tf.Tensor, low: tf.Tensor | int, high: tf.Tensor | int) -> tf.Tensor:
    """An integer in [low, high] from a uniform draw in [0, 1)."""
    low, high = tf.cast(low, tf.int32), tf.cast(high, tf.int32)
    offset = tf.cast(tf.floor(uniform * tf.cast(high - low + 1, tf.float32)), tf.int32)
    return low + tf.minimum(offset, high - low)  # float rounding must never step past ``high``
