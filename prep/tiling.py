"""Exact, non-resampling tiling: a grid of crops over an image whose border is padded, never rescaled."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tile:
    row: int
    col: int
    y: int  # top-left corner in the *unpadded* image
    x: int


def grid(height: int, width: int, tile_size: int) -> list[Tile]:
    """Tiles of ``tile_size`` covering an H×W image row by row; the last row/column may overhang."""
    if tile_size <= 0:
        raise ValueError(f"tile size must be positive, got {tile_size}")
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}×{width}")
    rows = -(-height // tile_size)
    cols = -(-width // tile_size)
    return [Tile(r, c, r * tile_size, c * tile_size) for r in range(rows) for c in range(cols)]


def pad_to_grid(array: np.ndarray, tile_size: int) -> np.ndarray:
    """Pad the bottom/right border up to a multiple of ``tile_size`` by reflection.

    Reflection (not a black frame) keeps the padded area looking like specimen, so a model cannot learn
    the frame as a cue. Images smaller than half a tile fall back to symmetric repetition, which numpy
    supports for any pad width.
    """
    height, width = array.shape[:2]
    pad_y = -height % tile_size
    pad_x = -width % tile_size
    if pad_y == 0 and pad_x == 0:
        return array
    widths = [(0, pad_y), (0, pad_x)] + [(0, 0)] * (array.ndim - 2)
    mode = "reflect" if pad_y < height and pad_x < width else "symmetric"
    return np.pad(array, widths, mode=mode)


def crop(padded: np.ndarray, tile: Tile, tile_size: int) -> np.ndarray:
    return padded[tile.y : tile.y + tile_size, tile.x : tile.x + tile_size]


def tile_name(source: str, tile: Tile) -> str:
    """Reference naming: ``<source>_<row>x<col>``."""
    return f"{source}_{tile.row}x{tile.col}"
