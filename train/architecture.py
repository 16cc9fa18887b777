"""Which FlexUNet an image size allows: the architecture rules of ``[model]``, pure (no Keras), so the config
is checked whole when it is loaded, before anything is built or touched."""

from __future__ import annotations

MIN_KERNEL = 3  # deeper levels shrink the kernel by 2 per level, down to this
MIN_DILATION = 1


def max_num_layers(image_height: int, image_width: int) -> int:
    """The deepest num_layers this image size allows: every one of the num_layers-1 poolings halves an even size."""
    poolings = 0
    height, width = image_height, image_width
    while height % 2 == 0 and width % 2 == 0 and height >= 2 and width >= 2:
        height, width = height // 2, width // 2
        poolings += 1
    return poolings + 1


def check_architecture(
    image_height: int,
    image_width: int,
    num_layers: int,
    base_kernels: tuple[int, int],
    dilation: tuple[int, int],
    downsample: int = 1,
) -> None:
    """Raise ValueError, naming the config key, for a FlexUNet that cannot be built for this image size."""
    if image_height < 1 or image_width < 1:
        raise ValueError(
            f"[model] image_height/image_width = {image_height}×{image_width}: the image size must be positive"
        )
    kernels = tuple(base_kernels)
    if len(kernels) != 2 or any(k < 1 for k in kernels):
        raise ValueError(f"[model] base_kernels = {kernels}: expected two positive odd kernel sizes, e.g. (9, 9)")
    if any(k % 2 == 0 for k in kernels):
        # An even 'same' kernel shifts features by half a pixel per layer; the reference requires odd sizes too.
        raise ValueError(f"[model] base_kernels = {kernels}: kernel sizes must be odd, e.g. (9, 9)")
    rates = tuple(dilation)
    if len(rates) != 2 or any(d < 1 for d in rates):
        raise ValueError(f"[model] dilation = {rates}: expected two dilation rates ≥ 1, e.g. (1, 1)")
    if num_layers < 1:
        raise ValueError(f"[model] num_layers = {num_layers}: at least 1 level is needed")
    if downsample < 1:
        raise ValueError(f"[model] downsample = {downsample}: expected 1 (full resolution) or more")
    if image_height % downsample or image_width % downsample:
        raise ValueError(
            f"[model] downsample = {downsample} does not divide the image size {image_height}×{image_width}"
        )
    deepest = max_num_layers(image_height // downsample, image_width // downsample)
    if num_layers > deepest:
        raise ValueError(
            f"[model] num_layers = {num_layers} is too deep for {image_height}×{image_width}: its "
            f"{num_layers - 1} poolings need height and width divisible by {downsample * 2 ** (num_layers - 1)}; "
            f"the most this size allows is num_layers = {deepest}"
        )


def pooling_multiple(num_layers: int, downsample: int = 1) -> int:
    """What every input side must be a multiple of: downsample × 2^(num_layers − 1)."""
    return downsample * 2 ** (num_layers - 1)
