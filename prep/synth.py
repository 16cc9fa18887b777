"""Synthetic EDF cervical cytology fields with exact nucleus masks (ISBI 2014 layout).

Mimics Extended-Depth-of-Field Pap smear images: a light, slightly uneven background; overlapping
translucent squamous cells (cytoplasm darkens multiplicatively, so overlaps are darker) with folds and
bacteria-like fine texture; at most one textured dark nucleus per cell; and dark debris that is *not*
nucleus (specks, fibres, elongated bits, small round inflammatory cells), so a model has to learn nucleus
size and texture rather than "dark = nucleus". Deterministic given the numpy Generator.

The pure core is :func:`synth_field`; :func:`write_sample` writes ``SYNnnn.png`` / ``SYNnnn_GT.png`` pairs (never
a real field's name).
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

__all__ = ["synth_field", "write_sample"]

# Geometry is designed at the ISBI field size; counts scale with area, object sizes stay in pixels
# (the real images have a fixed magnification).
REFERENCE_AREA = 1024 * 1024
MIN_SIZE = 32
SYNTH_PREFIX = "SYN"  # synthetic fields: SYN000…, never the real EDF000…

# Fixed-point precision for cv2 polygon drawing (sub-pixel vertices, still a hard-edged fill).
_SHIFT = 4
_ONE = 1 << _SHIFT


# ----------------------------------------------------------------------------------------------
# small drawing helpers (all work on local patches, then add into the full canvas)
# ----------------------------------------------------------------------------------------------


def _as_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def _gauss(img: np.ndarray, sigma: float) -> np.ndarray:
    # Fixed kernel size from sigma keeps results independent of OpenCV's auto-size heuristics.
    k = 2 * math.ceil(3 * sigma) + 1
    return cv2.GaussianBlur(img, (k, k), sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: float) -> np.ndarray:
    """Zero-mean, unit-ish smooth noise: a coarse random grid upsampled bicubically."""
    h, w = shape
    gh = max(2, int(round(h / cells)) + 2)
    gw = max(2, int(round(w / cells)) + 2)
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _outline(
    rng: np.random.Generator,
    radius: float,
    aspect: float,
    roughness: float,
    n_harmonics: int,
    n_points: int,
) -> np.ndarray:
    """Closed irregular outline around (0, 0): an ellipse whose radius is modulated by a few
    random low-order harmonics (decaying with order, so the edge stays smooth)."""
    theta = np.linspace(0.0, 2 * np.pi, n_points, endpoint=False)
    k = np.arange(2, 2 + n_harmonics)[:, None]
    amp = rng.normal(0.0, roughness, size=(n_harmonics, 1)) / np.sqrt(k - 1)
    phase = rng.uniform(0.0, 2 * np.pi, size=(n_harmonics, 1))
    r = 1.0 + (amp * np.cos(k * theta + phase)).sum(axis=0)
    r = np.clip(r, 0.55, 1.6)
    x = radius * r * np.cos(theta)
    y = radius / aspect * r * np.sin(theta)
    rot = rng.uniform(0.0, np.pi)
    c, s = np.cos(rot), np.sin(rot)
    return np.stack([c * x - s * y, s * x + c * y], axis=1)


def _chaikin(points: np.ndarray, iterations: int, cut: float) -> np.ndarray:
    """Corner cutting: a polygon becomes one with rounded corners but still fairly straight sides
    (squamous cells are angular, their corners soft). Smaller ``cut`` keeps corners tighter."""
    for _ in range(iterations):
        nxt = np.roll(points, -1, axis=0)
        points = np.stack([(1 - cut) * points + cut * nxt, cut * points + (1 - cut) * nxt], axis=1)
        points = points.reshape(-1, 2)
    return points


def _cell_outline(rng: np.random.Generator, radius: float) -> np.ndarray:
    """Outline of a squamous cell around (0, 0): an irregular, elongated polygon with rounded corners
    and a slightly wavy margin."""
    n = int(rng.integers(5, 11))
    theta = (np.arange(n) + rng.uniform(-0.35, 0.35, n)) * (2 * np.pi / n)
    r = radius * rng.uniform(0.72, 1.18, n)
    aspect = rng.uniform(1.0, 1.9)
    rot = rng.uniform(0.0, np.pi)
    x, y = r * np.cos(theta), r * np.sin(theta) / aspect
    c, s = np.cos(rot), np.sin(rot)
    poly = np.stack([c * x - s * y, s * x + c * y], axis=1)
    poly = _chaikin(poly, int(rng.integers(1, 3)), rng.uniform(0.1, 0.22))
    # Densify (~3 px spacing) and push the margin in/out with smooth 1-D noise: a wavy, ragged edge.
    seg = np.linalg.norm(np.roll(poly, -1, axis=0) - poly, axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    samples = np.arange(0.0, arc[-1], 3.0)
    closed = np.vstack([poly, poly[:1]])
    pts = np.stack([np.interp(samples, arc, closed[:, 0]), np.interp(samples, arc, closed[:, 1])], axis=1)
    noise = rng.normal(0.0, 1.0, len(pts))
    kernel = np.hanning(13) / np.hanning(13).sum()
    wrapped = np.concatenate([noise[-12:], noise, noise[:12]])  # circular smoothing of a closed curve
    wobble = np.convolve(wrapped, kernel, "same")[12:-12]
    wobble *= rng.uniform(0.3, 1.4) / (wobble.std() + 1e-6)
    norm = np.linalg.norm(pts, axis=1, keepdims=True) + 1e-6
    return pts + pts / norm * wobble[:, None]


def _fill(shape: tuple[int, int], points: np.ndarray) -> np.ndarray:
    """Hard-edged (not anti-aliased) polygon fill on a zero uint8 patch; points are patch coordinates."""
    patch = np.zeros(shape, np.uint8)
    pts = np.round(points * _ONE).astype(np.int32).reshape(1, -1, 2)
    cv2.fillPoly(patch, pts, 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return patch


def _paste_add(canvas: np.ndarray, patch: np.ndarray, y0: int, x0: int) -> None:
    """canvas[y0:, x0:] += patch, clipped to the canvas."""
    h, w = canvas.shape
    ph, pw = patch.shape
    ya, xa = max(y0, 0), max(x0, 0)
    yb, xb = min(y0 + ph, h), min(x0 + pw, w)
    if ya < yb and xa < xb:
        canvas[ya:yb, xa:xb] += patch[ya - y0 : yb - y0, xa - x0 : xb - x0]


def _paste_or(canvas: np.ndarray, patch: np.ndarray, y0: int, x0: int) -> None:
    h, w = canvas.shape
    ph, pw = patch.shape
    ya, xa = max(y0, 0), max(x0, 0)
    yb, xb = min(y0 + ph, h), min(x0 + pw, w)
    if ya < yb and xa < xb:
        canvas[ya:yb, xa:xb] |= patch[ya - y0 : yb - y0, xa - x0 : xb - x0].astype(bool)


def _crop(canvas: np.ndarray, y0: int, x0: int, ph: int, pw: int) -> np.ndarray:
    """The canvas window at (y0, x0) of size (ph, pw), zero outside the canvas."""
    out = np.zeros((ph, pw), canvas.dtype)
    h, w = canvas.shape
    ya, xa = max(y0, 0), max(x0, 0)
    yb, xb = min(y0 + ph, h), min(x0 + pw, w)
    if ya < yb and xa < xb:
        out[ya - y0 : yb - y0, xa - x0 : xb - x0] = canvas[ya:yb, xa:xb]
    return out


def _random_walk(rng: np.random.Generator, start: np.ndarray, n: int, step: float, turn: float) -> np.ndarray:
    """A smooth random curve (fibres, folds, bacteria): direction drifts by small random turns."""
    heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0.0, turn, n))
    steps = np.stack([np.cos(heading), np.sin(heading)], axis=1) * step
    return start + np.vstack([np.zeros((1, 2)), np.cumsum(steps, axis=0)])


def _ellipse(canvas: np.ndarray, x: float, y: float, axes: tuple[int, int], angle: float, value: float):
    """Filled anti-aliased ellipse of ``value`` (debris only: anti-aliasing never touches the mask)."""
    cv2.ellipse(canvas, (int(x), int(y)), axes, float(angle), 0, 360, float(value), -1, cv2.LINE_AA)


def _polylines(patch: np.ndarray, curves: list[np.ndarray], thickness: int, value: float = 1.0) -> None:
    pts = [np.round(c * _ONE).astype(np.int32).reshape(-1, 1, 2) for c in curves]
    cv2.polylines(patch, pts, False, value, thickness=thickness, lineType=cv2.LINE_AA, shift=_SHIFT)


# ----------------------------------------------------------------------------------------------
# scene components; each adds optical density (OD) so that image = background · exp(−OD)
# ----------------------------------------------------------------------------------------------


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Bright field with a soft illumination gradient and gentle large-scale unevenness."""
    level = rng.uniform(214.0, 236.0)
    yy = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
    xx = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy) * rng.uniform(2.0, 12.0)
    blotch = _smooth_noise(rng, (h, w), cells=max(h, w) / 3.0) * rng.uniform(0.8, 2.5)
    vignette = -(xx**2 + yy**2) * rng.uniform(0.0, 10.0)
    return level + ramp + blotch + vignette


def _cell_centres(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """Cells clump in real smears: most centres are drawn around a few cluster centres."""
    n_clusters = max(1, int(round(rng.uniform(1.5, 5.0) * math.sqrt(h * w / REFERENCE_AREA))))
    hubs = np.stack([rng.uniform(0, h, n_clusters), rng.uniform(0, w, n_clusters)], axis=1)
    spread = rng.uniform(60.0, 170.0, n_clusters)
    which = rng.integers(0, n_clusters, n)
    clustered = hubs[which] + rng.normal(0.0, 1.0, (n, 2)) * spread[which, None]
    scattered = np.stack([rng.uniform(0, h, n), rng.uniform(0, w, n)], axis=1)
    use_cluster = rng.random(n) < 0.7
    centres = np.where(use_cluster[:, None], clustered, scattered)
    # Allow cells to be cut by the border (as in tiles), but keep their centre near the field.
    return np.clip(centres, [-40, -40], [h + 40, w + 40])


def _inside_points(rng: np.random.Generator, outline: np.ndarray, n: int) -> np.ndarray:
    """n points inside a star-shaped outline: between its centroid and random outline points."""
    centre = outline.mean(axis=0)
    u = rng.uniform(0.05, 0.95, (n, 1))
    return centre + (outline[rng.integers(len(outline), size=n)] - centre) * u


def _add_cell(rng: np.random.Generator, od: np.ndarray, cy: float, cx: float) -> float:
    """One translucent squamous cell: rounded polygon, uneven density, darker rim, folds, texture.
    Returns its radius (so the caller can place the nucleus inside)."""
    # Mostly large superficial/intermediate squames, a few small (parabasal-like) cells.
    radius = rng.uniform(60.0, 140.0) if rng.random() < 0.85 else rng.uniform(40.0, 65.0)
    outline = _cell_outline(rng, radius)
    pad = 6
    lo = np.floor(outline.min(axis=0)).astype(int) - pad
    hi = np.ceil(outline.max(axis=0)).astype(int) + pad
    pw, ph = hi - lo
    x0, y0 = int(round(cx)) + lo[0], int(round(cy)) + lo[1]
    local = outline - lo + (cx - round(cx), cy - round(cy))
    alpha = _gauss(_fill((ph, pw), local).astype(np.float32), rng.uniform(0.7, 1.6))

    # Keratinised / thick cells are much denser; most are pale.
    density = rng.uniform(0.07, 0.2) if rng.random() < 0.8 else rng.uniform(0.2, 0.45)
    variation = 1.0 + rng.uniform(0.05, 0.22) * _smooth_noise(rng, (ph, pw), cells=rng.uniform(18, 45))
    variation += rng.uniform(0.03, 0.1) * _smooth_noise(rng, (ph, pw), cells=rng.uniform(5, 9))  # mottling
    cell = density * np.clip(variation, 0.4, None)

    if rng.random() < 0.85:  # thin darker margin (the cell edge seen slightly edge-on / folded)
        width = int(rng.integers(3, 6))
        inner = _gauss(cv2.erode(alpha, np.ones((width, width), np.uint8)), 1.0)
        cell += density * rng.uniform(0.4, 1.3) * np.clip(alpha - inner, 0.0, 1.0)
    if rng.random() < 0.6:  # folds and wrinkles: soft darker creases across the cell
        folds = np.zeros((ph, pw), np.float32)
        for _ in range(int(rng.integers(1, 9))):
            start = local[rng.integers(len(local))]
            curve = _random_walk(rng, start, int(rng.integers(5, 20)), radius / rng.uniform(6, 14), 0.3)
            _polylines(folds, [curve], int(rng.integers(1, 4)), float(rng.uniform(0.4, 1.0)))
        cell += density * rng.uniform(0.3, 1.0) * _gauss(folds, rng.uniform(0.8, 2.5))
    if rng.random() < 0.6:  # faint fibrous texture of the cytoplasm (keratin, surface wrinkles)
        n_fibres = int(radius**2 * rng.uniform(0.001, 0.006))
        fibres = np.zeros((ph, pw), np.float32)
        curves = [
            _random_walk(rng, s, int(rng.integers(3, 8)), rng.uniform(2.0, 4.0), 0.3)
            for s in _inside_points(rng, local, n_fibres)
        ]
        _polylines(fibres, curves, 1)
        cell += density * rng.uniform(0.6, 2.0) * _gauss(fibres, 0.7)
    if rng.random() < 0.25:  # bacteria-like short dark squiggles on the cytoplasm
        n_rods = int(radius**2 * rng.uniform(0.002, 0.012))
        starts = _inside_points(rng, local, n_rods)
        rods = np.zeros((ph, pw), np.float32)
        curves = [_random_walk(rng, s, 3, rng.uniform(2.0, 4.0), 0.5) for s in starts]
        _polylines(rods, curves, 1)
        cell += rng.uniform(0.15, 0.4) * _gauss(rods, 0.6)

    _paste_add(od, (alpha * cell).astype(np.float32), y0, x0)
    return radius


def _add_nucleus(rng: np.random.Generator, od: np.ndarray, mask: np.ndarray, cy: float, cx: float) -> None:
    """A textured dark nucleus; its hard-edged fill is the ground truth, the rendering is blurred."""
    diameter = rng.uniform(18.0, 32.0)
    aspect = 1.0 + rng.gamma(2.0, 0.12)
    outline = _outline(rng, diameter / 2, min(aspect, 2.0), rng.uniform(0.02, 0.08), 4, 48)
    pad = 8
    lo = np.floor(outline.min(axis=0)).astype(int) - pad
    hi = np.ceil(outline.max(axis=0)).astype(int) + pad
    pw, ph = hi - lo
    x0, y0 = int(round(cx)) + lo[0], int(round(cy)) + lo[1]
    local = outline - lo + (cx - round(cx), cy - round(cy))
    shape = _fill((ph, pw), local)
    # Keep nuclei apart (touching nuclei would merge into one ground-truth object): skip this one.
    halo = cv2.dilate(shape, np.ones((5, 5), np.uint8)).astype(bool)
    if not shape.any() or (_crop(mask, y0, x0, ph, pw) & halo).any():
        return

    out_of_focus = rng.random() < 0.2
    sigma = rng.uniform(1.3, 2.2) if out_of_focus else rng.uniform(0.5, 1.1)
    body = shape.astype(np.float32)
    # Chromatin: fine granular texture plus a few darker clumps.
    grain = _gauss(rng.standard_normal((ph, pw)).astype(np.float32), rng.uniform(0.8, 1.5))
    grain /= grain.std() + 1e-6
    texture = 1.0 + rng.uniform(0.08, 0.24) * grain
    texture += rng.uniform(0.0, 0.15) * _smooth_noise(rng, (ph, pw), cells=8.0)
    n_clumps = int(rng.integers(0, 5))
    if n_clumps:
        clumps = np.zeros((ph, pw), np.float32)
        inside = np.argwhere(shape)
        for y, x in inside[rng.integers(len(inside), size=n_clumps)]:
            cv2.circle(clumps, (int(x), int(y)), int(rng.integers(1, 3)), 1.0, -1)
        texture += rng.uniform(0.1, 0.3) * _gauss(clumps, 0.8)
    if rng.random() < 0.5:  # nuclear membrane slightly darker than the interior
        rim = body - cv2.erode(body, np.ones((3, 3), np.uint8), iterations=2)
        texture += rng.uniform(0.08, 0.25) * rim

    density = rng.uniform(0.38, 0.76) * (0.9 if out_of_focus else 1.0)
    nucleus = _gauss(body * texture, sigma) * density
    _paste_add(od, nucleus, y0, x0)
    _paste_or(mask, shape, y0, x0)


def _add_debris(rng: np.random.Generator, od: np.ndarray, mask: np.ndarray, area_scale: float) -> None:
    """Dark things that are NOT nuclei: specks, fibres, elongated bits, small inflammatory cells."""
    h, w = od.shape
    layer = np.zeros((h, w), np.float32)

    # Small irregular specks (dust, mucus dots), mostly tiny and pale, a few darker.
    n = rng.poisson(rng.uniform(20, 80) * area_scale)
    ys, xs = rng.uniform(0, h, n), rng.uniform(0, w, n)
    radii = rng.gamma(1.5, 0.8, n) + 0.4
    values = rng.beta(1.5, 3.0, n) * 0.9 + 0.08
    for y, x, r, v in zip(ys, xs, radii, values, strict=True):
        axes = (max(1, int(round(r * rng.uniform(0.6, 1.4)))), max(1, int(round(r))))
        _ellipse(layer, x, y, axes, rng.uniform(0, 180), v)

    # Thin fibres / strands (mucus threads, cotton) and many faint short squiggles on the background.
    n = rng.poisson(rng.uniform(20, 80) * area_scale)
    for _ in range(n):
        start = np.array([rng.uniform(0, w), rng.uniform(0, h)])
        long_fibre = rng.random() < 0.12
        steps = int(rng.integers(10, 40)) if long_fibre else int(rng.integers(2, 6))
        curve = _random_walk(rng, start, steps, rng.uniform(2.0, 5.0), 0.25 if long_fibre else 0.5)
        thickness = int(rng.integers(1, 3)) if long_fibre else 1
        _polylines(layer, [curve], thickness, float(rng.uniform(0.1, 0.45)))

    # A few elongated dark bits (bacterial clumps, pyknotic fragments): thin, dark, not round.
    n = rng.poisson(rng.uniform(2, 8) * area_scale)
    for _ in range(n):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        axes = (int(rng.integers(7, 16)), int(rng.integers(2, 4)))
        _ellipse(layer, x, y, axes, rng.uniform(0, 180), rng.uniform(0.5, 1.1))

    # Inflammatory cells: small (~8-12 px) very dark round blobs, often in small groups; never labelled.
    n_groups = rng.poisson(rng.uniform(2, 7) * area_scale)
    blobs = np.zeros((h, w), np.float32)
    for _ in range(n_groups):
        gy, gx = rng.uniform(0, h), rng.uniform(0, w)
        k = int(rng.integers(1, 7))
        for y, x in zip(gy + rng.normal(0, 9, k), gx + rng.normal(0, 9, k), strict=True):
            d = rng.uniform(7.0, 12.5)
            axes = (max(2, int(round(d / 2 * rng.uniform(0.85, 1.15)))), max(2, int(round(d / 2))))
            _ellipse(blobs, x, y, axes, rng.uniform(0, 180), rng.uniform(0.8, 1.5))
    layer += _gauss(blobs, 0.9)

    # Debris is never drawn over a labelled nucleus, so the mask stays the exact nucleus region.
    keep_out = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    layer[keep_out] = 0.0
    od += _gauss(layer, 0.6)


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------


def synth_field(size: int | tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Render one synthetic EDF field.

    Args:
        size: side length, or (height, width).
        rng: the only source of randomness (same generator state → identical output).

    Returns:
        (image, mask): image uint8 (H, W, 3) with three identical grey channels; mask bool (H, W), True
        exactly on nucleus pixels.
    """
    h, w = _as_hw(size)
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    area_scale = h * w / REFERENCE_AREA
    crowding = rng.uniform(0.7, 1.4)  # some fields are sparse, some crowded

    od = np.zeros((h, w), np.float32)
    mask = np.zeros((h, w), bool)

    n_cells = rng.poisson(44 * crowding * area_scale)
    for cy, cx in _cell_centres(rng, n_cells, h, w):
        radius = _add_cell(rng, od, cy, cx)
        if rng.random() < 0.9:  # a few anucleate squames
            off = rng.normal(0.0, 0.15 * radius, 2)
            _add_nucleus(rng, od, mask, cy + off[0], cx + off[1])

    # Bare nuclei lying on the background or on other cells.
    for _ in range(rng.poisson(4 * crowding * area_scale)):
        _add_nucleus(rng, od, mask, rng.uniform(0, h), rng.uniform(0, w))

    _add_debris(rng, od, mask, area_scale)

    image = _background(rng, h, w) * np.exp(-od)
    image = _gauss(image.astype(np.float32), rng.uniform(0.5, 0.9))  # optics: mild overall blur
    # Sensor noise: signal-dependent (Poisson-like) plus read noise, nearly white as in the real images.
    noise = rng.standard_normal((h, w)).astype(np.float32)
    image += noise * np.sqrt(rng.uniform(1.5, 4.0) + image * rng.uniform(0.005, 0.02))
    grey = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2), mask


def write_sample(
    output_dir: Path,
    count: int = 16,
    size: int = 1024,
    seed: int = 137,
    progress: bool = True,
) -> list[Path]:
    """Write ``SYN000.png … SYN{count-1}.png`` with ``SYNnnn_GT.png`` masks (3-channel, exactly 0/255), in the ISBI
    layout; named SYN so that they cannot be mistaken for (or collide with) the real ISBI fields EDF000….

    Image k is drawn from ``SeedSequence([seed, k])``, so it does not depend on ``count``.
    Returns the image paths.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} pixels, got {size}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in tqdm(range(count), desc="synth", unit="image", disable=not progress):
        rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
        image, mask = synth_field(size, rng)
        image_path = output_dir / f"{SYNTH_PREFIX}{index:03d}.png"
        gt_path = output_dir / f"{SYNTH_PREFIX}{index:03d}_GT.png"
        # OpenCV writes BGR; the grey channels are identical, but convert anyway to stay correct.
        if not cv2.imwrite(str(image_path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {image_path}")
        gt = np.repeat((mask.astype(np.uint8) * 255)[:, :, None], 3, axis=2)
        if not cv2.imwrite(str(gt_path), gt):
            raise OSError(f"could not write {gt_path}")
        paths.append(image_path)
    return paths
