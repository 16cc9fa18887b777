"""Sliding-window prediction of full-size images by a tile model, stitched with Gaussian importance weights.

Pure numpy (no TensorFlow): the model enters as ``predict_batch(tiles (B, t, t, C)) -> probabilities (B, t, t, K)``.
``stream_predict`` is the one core: it walks the tile rows top to bottom and keeps accumulators only for the band
of rows that pending tiles still touch (≤ 2·tile rows × padded width), so an 8192² input needs no full-size
buffers; ``sliding_window_predict`` collects its bands into one (H, W, K) array. Images smaller than a tile are
padded lazily by reflected indices (OpenCV's BORDER_REFLECT_101, repeated as often as needed), never copied whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

PredictBatch = Callable[[np.ndarray], np.ndarray]

WEIGHTINGS = ("gaussian", "constant")
TTA_MODES = (0, 2, 4, 8)

# Floor for the 1-D weight profile (so ≥ 1e-8 in the 2-D map): every pixel keeps a positive weight far above
# float32 denormals, so Σ p·w / Σ w stays accurate where only a tile's corner covers a pixel. The default σ
# (profile minimum ≈ 3.5e-4 at the tile edge) never reaches it.
_MIN_PROFILE = 1e-4


@dataclass
class StreamStats:
    """What a ``stream_predict`` run did; pass one in to have it filled."""

    tiles: int = 0  # tiles cut from the image (with TTA the model sees each 4 or 8 times)
    batches: int = 0  # batches of tiles (predict_batch is called once per batch, ×4 or ×8 with TTA)
    max_band_rows: int = 0  # tallest accumulator band in use (≤ 2·tile)


def _weight_profile(tile: int, weighting: str = "gaussian", sigma_scale: float = 0.125) -> np.ndarray:
    """1-D float64 weights along one tile axis; the 2-D weight map is their outer product.

    Separable weights make the sum of weights over the tile grid separable too, so stitching normalises by
    two precomputed 1-D sums instead of accumulating a 2-D weight sum tile by tile.
    """
    if tile < 1:
        raise ValueError(f"tile must be ≥ 1, got {tile}")
    if weighting == "constant":
        return np.ones(tile)
    if sigma_scale <= 0:
        raise ValueError(f"sigma_scale must be > 0, got {sigma_scale}")
    # centred at (tile − 1)/2 rather than tile//2 so the map is exactly symmetric under flips and transpose
    offsets = np.arange(tile, dtype=np.float64) - (tile - 1) / 2
    profile = np.exp(-(offsets**2) / (2 * (tile * sigma_scale) ** 2))
    return np.maximum(profile / profile.max(), _MIN_PROFILE)


def gaussian_importance(tile: int, sigma_scale: float = 0.125) -> np.ndarray:
    """(tile, tile) float32 Gaussian centred on the tile, σ = tile·sigma_scale (nnU-Net, MONAI), max 1, all > 0,
    symmetric under flips and transpose."""
    profile = _weight_profile(tile, "gaussian", sigma_scale)
    return np.outer(profile, profile).astype(np.float32)


def _coverage(starts: list[int], length: int, profile: np.ndarray) -> np.ndarray:
    """Sum of the 1-D profiles of tiles at ``starts`` over [0, length): the weight sum along one axis."""
    total = np.zeros(length)
    for start in starts:
        total[start:start + len(profile)] += profile
    return total


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Tile starts covering [0, length): 0 first, length − tile last, gaps ≤ round(tile·(1 − overlap)).

    As in nnU-Net, the minimal number of tiles for that stride is spread evenly over the length, so no seam
    gets a sliver overlap; at overlap 0 with length a multiple of tile this is the exact non-overlapping grid.
    """
    if tile < 1:
        raise ValueError(f"tile must be ≥ 1, got {tile}")
    if length < tile:
        raise ValueError(f"length {length} is shorter than the tile {tile} (pad first)")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    stride = max(1, round(tile * (1 - overlap)))
    span = length - tile
    gaps = -(-span // stride)  # ceil
    if gaps == 0:
        return [0]
    # integer rounding of i·span/gaps; span/gaps ≥ 1 keeps the starts strictly increasing
    return [(i * span + gaps // 2) // gaps for i in range(gaps + 1)]


def count_tiles(height: int, width: int, tile: int, overlap: float) -> int:
    """Number of tiles ``sliding_window_predict`` cuts from a height × width image (before TTA)."""
    return len(tile_starts(max(height, tile), tile, overlap)) * len(tile_starts(max(width, tile), tile, overlap))


def _dihedral(mode: int) -> list[tuple[int, bool]]:
    """(quarter turns, mirror) pairs: mode 2 = identity and h-flip; 4 = identity, h-flip, v-flip (= ½ turn of the
    h-flip), both; 8 = every flip and quarter turn."""
    turns = {2: (0,), 4: (0, 2)}.get(mode, (0, 1, 2, 3))
    return [(k, mirror) for k in turns for mirror in (False, True)]


def flip_tta(batch: np.ndarray, predict_batch: PredictBatch, mode: int) -> np.ndarray:
    """Predictions averaged over flips of the tiles, each mapped back: mode 0 plain, 2 mirror, 4 flips, 8 dihedral.

    ``batch`` is (B, t, t, C); ``predict_batch`` is called once per transform with a contiguous (B, t, t, C).
    """
    if mode not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES}, got {mode}")
    if mode == 0:
        return _checked(predict_batch(batch), batch)
    if mode == 8 and batch.shape[1] != batch.shape[2]:
        raise ValueError(f"tta 8 (rotations) needs square tiles, got {batch.shape[1]}×{batch.shape[2]}")
    total = None
    for turns, mirror in _dihedral(mode):
        view = np.flip(batch, axis=2) if mirror else batch
        view = np.rot90(view, turns, axes=(1, 2))
        prediction = _checked(predict_batch(np.ascontiguousarray(view)), batch)
        prediction = np.rot90(prediction, -turns, axes=(1, 2))
        if mirror:
            prediction = np.flip(prediction, axis=2)
        total = prediction.astype(np.float32) if total is None else total + prediction
    return total / np.float32(len(_dihedral(mode)))


def _checked(prediction, batch: np.ndarray) -> np.ndarray:
    prediction = np.asarray(prediction, dtype=np.float32)
    if prediction.ndim != 4 or prediction.shape[:3] != batch.shape[:3]:
        raise ValueError(f"predict_batch returned shape {prediction.shape} for tiles {batch.shape}; "
                         f"expected {batch.shape[:3]} + (classes,)")
    return prediction


def _reflect_101(indices: np.ndarray, length: int) -> np.ndarray:
    """Map any indices into [0, length) by mirror reflection without repeating the edge (BORDER_REFLECT_101),
    repeated periodically so pads longer than the image work; a length-1 axis repeats its pixel."""
    if length == 1:
        return np.zeros_like(indices)
    period = 2 * (length - 1)
    folded = np.mod(indices, period)
    return np.where(folded < length, folded, period - folded)


def _cut_tile(image: np.ndarray, y: int, x: int, tile: int, out: np.ndarray) -> None:
    height, width = image.shape[:2]
    if y + tile <= height and x + tile <= width:
        out[...] = image[y:y + tile, x:x + tile]
    else:  # only images smaller than a tile get here: pad just this tile
        rows = _reflect_101(np.arange(y, y + tile), height)
        cols = _reflect_101(np.arange(x, x + tile), width)
        out[...] = image[np.ix_(rows, cols)]


def _validate(image: np.ndarray, tile: int, batch_size: int, weighting: str, tta: int) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image must be (H, W, C) with H, W ≥ 1, got shape {image.shape}")
    if tile < 1 or batch_size < 1:
        raise ValueError(f"tile and batch_size must be ≥ 1, got {tile} and {batch_size}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES}, got {tta}")
    return image


def stream_predict(image: np.ndarray, predict_batch: PredictBatch, tile: int, overlap: float = 0.25,
                   batch_size: int = 4, weighting: str = "gaussian", tta: int = 0,
                   stats: StreamStats | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield (y0, y1, probabilities of image rows y0:y1 as (y1 − y0, W, K) float32), top to bottom.

    The bands tile [0, H) exactly and in order. Tiles keep the image's dtype (the predictor scales them).
    Tiles are predicted in raster order, batches running across tile rows, but a batch never reaches more than
    one tile height below its first tile row, so the accumulators stay ≤ 2·tile rows.
    """
    image = _validate(image, tile, batch_size, weighting, tta)
    height, width, channels = image.shape
    padded_height, padded_width = max(height, tile), max(width, tile)
    row_starts = tile_starts(padded_height, tile, overlap)
    col_starts = tile_starts(padded_width, tile, overlap)
    positions = [(y, x) for y in row_starts for x in col_starts]
    profile = _weight_profile(tile, weighting)
    weight = np.outer(profile, profile).astype(np.float32)[:, :, None]
    # Σ over tiles of w(y − y_i)·w(x − x_j) = (Σ_i w(y − y_i))·(Σ_j w(x − x_j)): the grid is a full product
    inverse_row_sum = (1 / _coverage(row_starts, padded_height, profile)).astype(np.float32)
    inverse_col_sum = (1 / _coverage(col_starts, padded_width, profile))[:width].astype(np.float32)
    stats = stats if stats is not None else StreamStats()

    capacity = min(2 * tile, padded_height)
    weighted_sum = None  # (capacity, padded_width, K) once the first prediction tells K
    batch = np.empty((batch_size, tile, tile, channels), image.dtype)
    top = 0  # padded-image row held in accumulator row 0
    used = 0  # accumulator rows [0, used) hold sums; the rest are zero
    done = 0
    while done < len(positions):
        first_y = positions[done][0]
        count = 0
        while done + count < len(positions) and count < batch_size and positions[done + count][0] - first_y <= tile:
            count += 1
        batch_positions = positions[done:done + count]
        for slot, (y, x) in enumerate(batch_positions):
            _cut_tile(image, y, x, tile, batch[slot])
        probabilities = flip_tta(batch[:count], predict_batch, tta)
        if weighted_sum is None:
            weighted_sum = np.zeros((capacity, padded_width, probabilities.shape[3]), np.float32)
            weight = np.ascontiguousarray(np.broadcast_to(weight, (tile, tile, probabilities.shape[3])))
            weighted = np.empty_like(weight)  # scratch: the predictor's output may be read-only or reused
        for (y, x), tile_probabilities in zip(batch_positions, probabilities, strict=True):
            if weighting != "constant":
                tile_probabilities = np.multiply(tile_probabilities, weight, out=weighted)
            weighted_sum[y - top:y - top + tile, x:x + tile] += tile_probabilities
            used = max(used, y + tile - top)
        done += count
        stats.tiles += count
        stats.batches += 1
        stats.max_band_rows = max(stats.max_band_rows, used)

        # Rows above the next tile's row start are final: no later tile reaches them.
        final = positions[done][0] if done < len(positions) else padded_height
        if final > top:
            out_rows = min(final, height) - top
            if out_rows > 0:
                band = weighted_sum[:out_rows, :width] * inverse_row_sum[top:top + out_rows, None, None]
                band *= inverse_col_sum[None, :, None]
                yield top, top + out_rows, band
            shift = final - top  # move the unfinished rows up, clear the vacated ones
            weighted_sum[:used - shift] = weighted_sum[shift:used]
            weighted_sum[used - shift:used] = 0
            used -= shift
            top = final


def whole_predict(image: np.ndarray, predict_batch: PredictBatch, multiple: int, tta: int = 0) -> np.ndarray:
    """Probabilities (H, W, K) float32 of the whole image in one pass of a fully convolutional network: reflected
    (BORDER_REFLECT_101) up to the next ``multiple`` of rows and columns (the network's pooling), predicted with
    ``tta``, cropped back. No tile overlap is predicted twice; the memory is the network's on the whole image.
    Rotations need a square input, so a non-square image with tta 8 is padded to a square first."""
    image = _validate(image, 1, 1, "gaussian", tta)
    height, width = image.shape[:2]
    padded_height, padded_width = (-(-height // multiple) * multiple, -(-width // multiple) * multiple)
    if tta == 8:
        padded_height = padded_width = max(padded_height, padded_width)
    rows = _reflect_101(np.arange(padded_height), height)
    cols = _reflect_101(np.arange(padded_width), width)
    padded = image if (padded_height, padded_width) == (height, width) else image[np.ix_(rows, cols)]
    return flip_tta(padded[None], predict_batch, tta)[0, :height, :width]


def sliding_window_predict(image: np.ndarray, predict_batch: PredictBatch, tile: int, overlap: float = 0.25,
                           batch_size: int = 4, weighting: str = "gaussian", tta: int = 0,
                           stats: StreamStats | None = None) -> np.ndarray:
    """(H, W, K) float32 probabilities for the whole image: ``stream_predict``'s bands put together."""
    image = _validate(image, tile, batch_size, weighting, tta)
    result = None
    for y0, y1, band in stream_predict(image, predict_batch, tile, overlap, batch_size, weighting, tta, stats):
        if result is None:
            result = np.empty((image.shape[0], image.shape[1], band.shape[2]), np.float32)
        result[y0:y1] = band
    return result


def assemble_tiles(tiles: np.ndarray, height: int, width: int, tile: int) -> np.ndarray:
    """Put (N, t, t, K) tiles of a non-overlapping grid, in raster order, back into (height, width, K);
    height and width must be multiples of tile."""
    if height % tile or width % tile:
        raise ValueError(f"{height}×{width} is not a whole grid of {tile}-pixel tiles")
    rows, cols = height // tile, width // tile
    if len(tiles) != rows * cols:
        raise ValueError(f"{len(tiles)} tiles for a {rows}×{cols} grid")
    grid = np.asarray(tiles).reshape(rows, cols, tile, tile, -1)
    return grid.transpose(0, 2, 1, 3, 4).reshape(height, width, -1)
