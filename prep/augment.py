"""Pure augmentations: (image, mask, parameters, rng) → (image, mask).

Every geometric transform is one sampling map applied to both arrays: the image with bilinear
interpolation, the mask with nearest neighbour so it keeps its levels exactly (0/255, and 128 for ignored
pixels). Borders are reflected, never black, so a model cannot learn a frame as a cue. Each augmented tile is
made from the original tile, never from another augmented one (the reference compounded its barrel distortions).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

BORDER = cv2.BORDER_REFLECT_101


@dataclass(frozen=True)
class AugSpec:
    """One augmentation with fixed parameters; ``prefix`` is the reference's file-name prefix."""

    kind: str
    prefix: str
    params: dict = field(default_factory=dict, hash=False, compare=False)


def _fmt(value: float) -> str:
    """Shortest exact text for a parameter in a file name: 1300, 0.3, -0.3."""
    return f"{value:g}"


@dataclass(frozen=True)
class AugOptions:
    """The augmentation set; defaults are the reference project's values."""

    hflip: bool = True
    vflip: bool = True
    rotations: tuple[int, ...] = (90, 180, 270)
    elastic_alpha: float = 1300.0
    elastic_sigmas: tuple[float, ...] = (8.0, 10.0)
    distortion_sizes: tuple[float, ...] = (0.02, 0.03)
    distortion_sigma: float = 40.0
    barrel_radius: float = 0.3
    barrel_amounts: tuple[float, ...] = (0.3,)
    barrel_centers: tuple[tuple[float, float], ...] = (
        (0.3, 0.3), (0.7, 0.3), (0.5, 0.5), (0.3, 0.7), (0.7, 0.7),
    )
    pincushion_amounts: tuple[float, ...] = (-0.3,)
    fade_factors: tuple[float, ...] = ()  # not in the reference: off unless asked for


NO_AUGMENTATION = AugOptions(
    hflip=False, vflip=False, rotations=(), elastic_sigmas=(), distortion_sizes=(),
    barrel_amounts=(), pincushion_amounts=(),
)


def plan(options: AugOptions) -> list[AugSpec]:
    """The list of augmentations to make for every tile, in a fixed order."""
    specs: list[AugSpec] = []
    if options.hflip:
        specs.append(AugSpec("hflip", "hflipped"))
    if options.vflip:
        specs.append(AugSpec("vflip", "vflipped"))
    for degrees in options.rotations:
        specs.append(AugSpec("rotate", f"rotated_{degrees}", {"degrees": degrees}))
    for sigma in options.elastic_sigmas:
        specs.append(AugSpec(
            "elastic", f"deformed_alpha_{_fmt(options.elastic_alpha)}_sigmoid_{_fmt(sigma)}",
            {"alpha": options.elastic_alpha, "sigma": sigma},
        ))
    for size in options.distortion_sizes:
        specs.append(AugSpec(
            "distort", f"distorted_{_fmt(size)}_sigma_{_fmt(options.distortion_sigma)}",
            {"size": size, "sigma": options.distortion_sigma},
        ))
    # Reference numbering: barrel centre k is 1001, 1002, … in the order given.
    for kind, prefix, amounts in (
        ("barrel", "barrdistorted", options.barrel_amounts),
        ("pincushion", "pincdistorted", options.pincushion_amounts),
    ):
        for amount in amounts:
            for index, (cx, cy) in enumerate(options.barrel_centers, start=1):
                specs.append(AugSpec(
                    kind,
                    f"{prefix}_{1000 + index}_{_fmt(options.barrel_radius)}_{_fmt(amount)}",
                    {"center": [cx, cy], "radius": options.barrel_radius, "amount": amount},
                ))
    for factor in options.fade_factors:
        specs.append(AugSpec("fade", f"faded_{_fmt(factor)}", {"factor": factor}))
    prefixes = [spec.prefix for spec in specs]
    duplicates = sorted({p for p in prefixes if prefixes.count(p) > 1})
    if duplicates:
        raise ValueError(f"augmentation parameters repeat: {', '.join(duplicates)}")
    return specs


# ---------------------------------------------------------------------------------------------- maps

def remap(image: np.ndarray, mask: np.ndarray, map_x: np.ndarray, map_y: np.ndarray):
    """Sample image (bilinear) and mask (nearest) at (map_y, map_x); reflected borders."""
    warped_image = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=BORDER)
    warped_mask = cv2.remap(mask, map_x, map_y, cv2.INTER_NEAREST, borderMode=BORDER)
    return warped_image, warped_mask


@functools.lru_cache(maxsize=64)
def _identity_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.indices((height, width), dtype=np.float32)
    xs.setflags(write=False)
    ys.setflags(write=False)
    return xs, ys


@functools.lru_cache(maxsize=64)
def barrel_map(height: int, width: int, cx: float, cy: float, radius: float, amount: float):
    """Sampling map of a barrel (amount > 0) or pincushion (amount < 0) distortion.

    Around centre c = (cx·W, cy·H) with R = radius·W, a pixel at offset d (|d| < R) samples
    c + d·sin(π|d|/2R)^amount; outside R it is left alone. The map depends only on these arguments,
    so it is computed once, vectorised, and cached (the reference looped over pixels in Python per tile).
    """
    if radius <= 0:
        raise ValueError(f"barrel radius must be positive, got {radius}")
    xs, ys = _identity_grid(height, width)
    centre_x, centre_y = cx * width, cy * height
    limit = radius * width
    dx = xs - np.float32(centre_x)
    dy = ys - np.float32(centre_y)
    distance = np.hypot(dx, dy)
    inside = (distance < limit) & (distance > 0)
    factor = np.sin(np.float32(math.pi / (2 * limit)) * distance[inside]) ** np.float32(amount)
    # Pixels outside R (and every pixel at amount 0) keep their exact coordinates: no rounding drift.
    map_x = xs.copy()
    map_y = ys.copy()
    if amount != 0:
        map_x[inside] = np.float32(centre_x) + dx[inside] * factor
        map_y[inside] = np.float32(centre_y) + dy[inside] * factor
    map_x.setflags(write=False)
    map_y.setflags(write=False)
    return map_x, map_y


@functools.lru_cache(maxsize=64)
def barrel_remap_tables(height: int, width: int, cx: float, cy: float, radius: float, amount: float):
    """The barrel map, cached in OpenCV's fixed-point form and cut to the box around the distorted disc.

    cv2.remap converts float maps to fixed point on every call, and outside radius R the map is the
    identity, so converting once and remapping only the disc's bounding box (about a third of the tile at
    R = 0.3·W) makes each tile several times cheaper. Returns ((y0, y1, x0, x1), bilinear table pair,
    nearest table); the nearest table rounds coordinates as the float map does.
    """
    map_x, map_y = barrel_map(height, width, cx, cy, radius, amount)
    moved = (map_x != _identity_grid(height, width)[0]) | (map_y != _identity_grid(height, width)[1])
    rows, cols = np.flatnonzero(moved.any(axis=1)), np.flatnonzero(moved.any(axis=0))
    if rows.size == 0:  # amount 0, or a disc smaller than a pixel: nothing moves
        return (0, 0, 0, 0), None, None
    y0, y1, x0, x1 = box = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
    region_x = np.ascontiguousarray(map_x[y0:y1, x0:x1])
    region_y = np.ascontiguousarray(map_y[y0:y1, x0:x1])
    linear = cv2.convertMaps(region_x, region_y, cv2.CV_16SC2)
    nearest, _ = cv2.convertMaps(region_x, region_y, cv2.CV_16SC2, nninterpolation=True)
    return box, linear, nearest


def barrel_map_naive(height: int, width: int, cx: float, cy: float, radius: float, amount: float):
    """The same map with a per-pixel Python double loop, the reference's way: only for benchmarks/tests."""
    centre_x, centre_y = cx * width, cy * height
    limit = radius * width
    map_x = np.zeros((height, width), np.float32)
    map_y = np.zeros((height, width), np.float32)
    for y in range(height):
        for x in range(width):
            dx, dy = x - centre_x, y - centre_y
            distance = math.sqrt(dx * dx + dy * dy)
            factor = math.sin(math.pi * distance / (2 * limit)) ** amount if 0 < distance < limit else 1.0
            map_x[y, x] = centre_x + dx * factor
            map_y[y, x] = centre_y + dy * factor
    return map_x, map_y


def _smooth_noise(noise: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(noise, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=BORDER)


def reference_alpha_scale(sigma: float, channels: int = 3) -> float:
    """How much the reference's elastic field was attenuated by also smoothing across colour channels.

    The reference filtered its U(−1, 1) noise as an H×W×3 volume (zero padding along the 3 channels), so
    the middle channel's displacement is a sum of 3 independent smoothed planes weighted by the 1-D
    Gaussian at offsets −1, 0, 1: its spread shrinks by sqrt(Σ w²) ≈ 0.086 at σ = 8. Applying the same
    factor to a 2-D field keeps α = 1300 meaning what it meant there (displacements of ~2 px); a literal
    2-D Simard field with α = 1300 tears the tissue apart.
    """
    radius = int(4.0 * sigma + 0.5)  # scipy.ndimage.gaussian_filter's kernel (truncate = 4)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    middle = channels // 2
    weights = [kernel[radius + c - middle] if abs(c - middle) <= radius else 0.0 for c in range(channels)]  # σ < 1/8
    return float(np.sqrt(np.sum(np.square(weights))))


def elastic_map(height: int, width: int, alpha: float, sigma: float, rng: np.random.Generator):
    """Simard et al. (2003): displacements G_σ * U(−1, 1) · α, one field for image and mask, with α in
    the reference's units (see ``reference_alpha_scale``)."""
    xs, ys = _identity_grid(height, width)
    gain = np.float32(alpha * reference_alpha_scale(sigma))
    dx = _smooth_noise(rng.uniform(-1, 1, (height, width)).astype(np.float32), sigma) * gain
    dy = _smooth_noise(rng.uniform(-1, 1, (height, width)).astype(np.float32), sigma) * gain
    return xs + dx, ys + dy


def _gaussian_gradient_field(height: int, width: int, sigma: float, rng: np.random.Generator):
    """∂x and ∂y of G_σ * N(0, 1), computed in Fourier space (σ = 40 makes a direct kernel ~320 px wide)."""
    noise = rng.standard_normal((height, width)).astype(np.float32)
    spectrum = np.fft.rfft2(noise)
    ky = np.fft.fftfreq(height)[:, None] * (2 * np.pi)
    kx = np.fft.rfftfreq(width)[None, :] * (2 * np.pi)
    transfer = np.exp(-0.5 * sigma**2 * (kx**2 + ky**2))
    smoothed = spectrum * transfer
    grad_x = np.fft.irfft2(smoothed * (1j * kx), s=(height, width))
    grad_y = np.fft.irfft2(smoothed * (1j * ky), s=(height, width))
    return grad_x.astype(np.float32), grad_y.astype(np.float32)


def distortion_map(height: int, width: int, size: float, sigma: float, rng: np.random.Generator):
    """Random-field distortion: the gradient of smoothed Gaussian noise, scaled so the largest
    displacement is ``size``·W pixels."""
    xs, ys = _identity_grid(height, width)
    grad_x, grad_y = _gaussian_gradient_field(height, width, sigma, rng)
    largest = float(np.sqrt(grad_x**2 + grad_y**2).max())
    scale = np.float32(size * width / largest) if largest > 0 else np.float32(0)
    return xs + grad_x * scale, ys + grad_y * scale


# ---------------------------------------------------------------------------------------------- apply

RANDOM_KINDS = frozenset({"elastic", "distort"})


def apply(spec: AugSpec, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator | None = None):
    """Apply one augmentation to an RGB uint8 image and a uint8 mask of the same size (its levels, prep.imageio's
    0 / 255 and maybe 128, are kept exactly: the mask is sampled with nearest neighbour)."""
    height, width = mask.shape[:2]
    if spec.kind == "hflip":
        return image[:, ::-1].copy(), mask[:, ::-1].copy()
    if spec.kind == "vflip":
        return image[::-1].copy(), mask[::-1].copy()
    if spec.kind == "rotate":
        degrees = spec.params["degrees"]
        if degrees % 90 or height != width:
            raise ValueError(f"rotation by {degrees}° needs a square tile and a multiple of 90°")
        turns = (degrees // 90) % 4  # counter-clockwise, as cv2's positive angles
        return np.ascontiguousarray(np.rot90(image, turns)), np.ascontiguousarray(np.rot90(mask, turns))
    if spec.kind in ("barrel", "pincushion"):
        cx, cy = spec.params["center"]
        (y0, y1, x0, x1), linear, nearest = barrel_remap_tables(
            height, width, float(cx), float(cy), float(spec.params["radius"]), float(spec.params["amount"]))
        out_image, out_mask = image.copy(), mask.copy()
        if linear is not None:  # the maps hold absolute coordinates: sample the whole tile, write the box
            out_image[y0:y1, x0:x1] = cv2.remap(image, *linear, cv2.INTER_LINEAR, borderMode=BORDER)
            out_mask[y0:y1, x0:x1] = cv2.remap(mask, nearest, None, cv2.INTER_NEAREST, borderMode=BORDER)
        return out_image, out_mask
    if spec.kind == "fade":
        return fade_nuclei(image, mask, spec.params["factor"]), mask.copy()
    if rng is None:
        raise ValueError(f"{spec.kind} augmentation needs a random generator")
    if spec.kind == "elastic":
        maps = elastic_map(height, width, spec.params["alpha"], spec.params["sigma"], rng)
        return remap(image, mask, *maps)
    if spec.kind == "distort":
        maps = distortion_map(height, width, spec.params["size"], spec.params["sigma"], rng)
        return remap(image, mask, *maps)
    raise ValueError(f"unknown augmentation kind {spec.kind!r}")


# Pixels around a nucleus that the surroundings estimate skips: annotated outlines sit a pixel or two inside the
# dark rim, so the rim must be replaced too or it would stay as a dark ring around the faded nucleus.
FADE_RIM = 2
# Width (σ, pixels) of the soft edge between faded and untouched pixels: no seam for the model to learn.
FADE_EDGE_SIGMA = 1.0


def nucleus_surroundings(image: np.ndarray, nuclei: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(region, surroundings): the nuclei grown by a ``FADE_RIM`` pixel rim (uint8 0/1), and ``image`` with that
    region inpainted (Telea, 2004) from the pixels around it: what lies under each nucleus, as its contrast is
    measured (fade_nuclei, bench/miss_kinds.py)."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * FADE_RIM + 1, 2 * FADE_RIM + 1))
    region = cv2.dilate(nuclei.astype(np.uint8), kernel)
    return region, cv2.inpaint(image, region, 2 * FADE_RIM + 1, cv2.INPAINT_TELEA)


def fade_nuclei(image: np.ndarray, mask: np.ndarray, factor: float) -> np.ndarray:
    """The image with every annotated nucleus's contrast to its surroundings multiplied by ``factor`` (0 < factor < 1).

    The surroundings under each nucleus are estimated by inpainting (Telea, 2004) the nucleus and a ``FADE_RIM``
    pixel rim from the pixels around it; each pixel then moves towards that estimate: out = s + factor·(in − s),
    so the nucleus keeps its shape and texture at a fraction of its contrast. Pale nuclei inside dark cytoplasm
    clumps are what a model trained on the usual dark nuclei misses; the mask is unchanged (they are still nuclei).
    """
    if not 0 < factor < 1:
        raise ValueError(f"fade factor must be in (0, 1), got {factor}")
    nuclei = (mask if mask.ndim == 2 else mask[..., 0]) > 0  # an ignored outline line (128) fades with its nucleus
    if not nuclei.any():
        return image.copy()
    region, surroundings = nucleus_surroundings(image, nuclei)
    surroundings = surroundings.astype(np.float32)
    weight = cv2.GaussianBlur(region.astype(np.float32), (0, 0), FADE_EDGE_SIGMA)
    weight = np.maximum(weight, nuclei.astype(np.float32))  # annotated pixels fade fully
    if image.ndim == 3:
        weight = weight[..., None]
    pixels = image.astype(np.float32)
    faded = pixels + weight * (1.0 - factor) * (surroundings - pixels)
    return np.clip(np.rint(faded), 0, 255).astype(np.uint8)


def parse_floats(text: str, what: str) -> tuple[float, ...]:
    """'0.02,0.03' → (0.02, 0.03); rejects NaN/inf with a message naming ``what``."""
    values = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = float(part)
        except ValueError as err:
            raise ValueError(f"{what}: {part!r} is not a number") from err
        if not math.isfinite(value):
            raise ValueError(f"{what}: {part!r} is not a finite number")
        values.append(value)
    return tuple(values)


def parse_centers(text: str, what: str = "--barrel-centers") -> tuple[tuple[float, float], ...]:
    """'0.3,0.3;0.7,0.3' → ((0.3, 0.3), (0.7, 0.3))."""
    centres = []
    for part in text.split(";"):
        if not part.strip():
            continue
        values = parse_floats(part, what)
        if len(values) != 2:
            raise ValueError(f"{what}: {part.strip()!r} is not an 'x,y' pair")
        centres.append((values[0], values[1]))
    return tuple(centres)


def sequence_text(values: Sequence[float]) -> str:
    return ",".join(_fmt(v) for v in values)
