"""Nucleus ground truth in the forms the ISBI 2014 EDF set is published in, as one boolean mask.

- *Filled* masks: 8- or 16-bit grey (EDF004–EDF015 hold 0/32896), RGB, or 0/255; nucleus = the pixels the rule
  keeps (``nonzero`` by default).
- *Outline* masks (EDF000–EDF003): closed 1-pixel contours, one grey level per nucleus, not filled. Read as
  "non-zero = nucleus" they are rings holding a fifth of the nucleus pixels, so ``auto`` recognises them and
  fills them: an annotation whose contours enclose holes that make up most of the filled area is an outline GT.
  An annotation made of thin lines that enclose almost nothing is an outline GT whose contours do not close:
  an error, since filling cannot recover those nuclei and reading them as rings would train on wrong masks.

The core (``interpret``) is pure; ``read_truth`` decodes a file and names it in every error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from prep.imageio import DEFAULT_MAX_PIXELS, IGNORE_LEVEL, MASK_RULES, NUCLEUS_LEVEL, binarise, decode

# auto: filled masks as they are (nonzero), outlines filled with their contour line; auto-interior: the same, but
# an outline's own line is left out, only what it encloses is nucleus; auto-ignore-line: what it encloses is
# nucleus and the line itself is neither nucleus nor background (Truth.ignore: tile masks write it as
# prep.imageio.IGNORE_LEVEL, which training skips). The published outlines run about a pixel outside the nucleus's
# edge, where the filled masks of EDF004–EDF015 end at it (docs/results.md, "Two ground-truth edges").
FILLING_RULES = ("auto", "auto-interior", "auto-ignore-line", "outline")  # may fill outlines; the rest binarise only
LINE_LEFT_OUT = ("auto-interior", "auto-ignore-line")  # an outline's own line is not nucleus
GT_RULES = (*FILLING_RULES, *MASK_RULES)
FILLED, OUTLINE = "filled", "outline"
# Outline GT: the enclosed holes are more than this share of the filled area (EDF000–003: 0.77–0.80; a filled
# nucleus mask has none, or a few pixels).
OUTLINE_HOLE_SHARE = 0.5
# Thin lines: under this share of the annotated pixels survive a 3×3 erosion (1-pixel contours: 0.00–0.001;
# filled nuclei of 20–30 px: 0.8–0.85; a filled disc must be about 4 px across to fall below it).
THIN_SURVIVAL = 0.2
# Diagonal contact does not join two nuclei: EDF002 has two outlines that touch at a corner, 37 nuclei.
_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)
_EIGHT_CONNECTED = ndimage.generate_binary_structure(2, 2)


class TruthError(ValueError):
    """Ground truth that cannot be read as nucleus masks; the message names the file."""


@dataclass(frozen=True)
class Truth:
    """A nucleus annotation read as a boolean mask, with the form it came in."""

    mask: np.ndarray  # bool H×W
    form: str  # FILLED or OUTLINE (filled by us)
    nuclei: int  # 4-connected components of the mask
    ignore: np.ndarray | None = None  # bool H×W: neither nucleus nor background (auto-ignore-line), or None

    @property
    def nucleus_fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    def levels(self) -> np.ndarray:
        """uint8 H×W in the tile masks' levels: 0 background, NUCLEUS_LEVEL nucleus, IGNORE_LEVEL ignored."""
        levels = self.mask.astype(np.uint8) * NUCLEUS_LEVEL
        if self.ignore is not None:
            levels[self.ignore] = IGNORE_LEVEL
        return levels


def count_nuclei(mask: np.ndarray) -> int:
    return int(ndimage.label(mask, structure=_FOUR_CONNECTED)[1])


def _thin(annotated: np.ndarray) -> bool:
    kept = np.count_nonzero(ndimage.binary_erosion(annotated, structure=_EIGHT_CONNECTED))
    return kept < THIN_SURVIVAL * np.count_nonzero(annotated)


def _open_contours(annotated: np.ndarray, filled: np.ndarray) -> list[tuple[int, int]]:
    """(x, y) of one pixel of every contour piece that encloses nothing (its filled area is its own pixels)."""
    labels, count = ndimage.label(filled, structure=_EIGHT_CONNECTED)
    area = np.bincount(labels.ravel(), minlength=count + 1)
    own = np.bincount(labels[annotated], minlength=count + 1)
    open_ids = [i for i in range(1, count + 1) if area[i] == own[i]]
    where = ndimage.find_objects(labels)
    return [(where[i - 1][1].start, where[i - 1][0].start) for i in open_ids]


def interpret(annotation: np.ndarray, rule: str = "auto", name: str = "ground truth") -> Truth:
    """The nucleus mask of one annotation image (grey, 16-bit or RGB array) by ``rule``.

    ``auto``: a filled mask is taken as it is (any non-black pixel), an outline mask is filled, thin lines that do
    not close are refused (TruthError naming ``name``). ``auto-interior``: as ``auto``, but an outline's own line
    is not nucleus, only what it encloses. ``auto-ignore-line``: as ``auto-interior``, and the line is
    ``Truth.ignore`` (neither nucleus nor background). ``outline``: fill whatever contours there are. The other
    rules are prep.imageio's (``nonzero`` is exact on filled masks and never fills)."""
    if rule not in GT_RULES:
        raise ValueError(f"unknown ground-truth rule {rule!r} (one of {', '.join(GT_RULES)})")
    if rule not in FILLING_RULES:
        mask = binarise(annotation, rule)
        return Truth(mask, FILLED, count_nuclei(mask))
    annotated = binarise(annotation, "nonzero")
    if not annotated.any():
        return Truth(annotated, FILLED, 0)
    filled = ndimage.binary_fill_holes(annotated)
    enclosed = np.count_nonzero(filled) - np.count_nonzero(annotated)
    if rule == "outline" or enclosed > OUTLINE_HOLE_SHARE * np.count_nonzero(filled):
        open_pieces = _open_contours(annotated, filled) if rule != "outline" else []
        if open_pieces:
            x, y = open_pieces[0]
            raise TruthError(f"{name}: an outline ground truth with {len(open_pieces)} contour(s) that do not "
                             f"close (the first near x={x}, y={y}): they cannot be filled; close them, or give "
                             "--gt-rule outline to fill the closed ones and keep the rest as drawn")
        if rule in LINE_LEFT_OUT:
            filled = filled & ~annotated
        ignore = annotated if rule == "auto-ignore-line" else None
        return Truth(filled, OUTLINE, count_nuclei(filled), ignore)
    if _thin(annotated):
        raise TruthError(f"{name}: the ground truth is thin lines (nucleus outlines?) that enclose almost nothing "
                         f"({enclosed} of {np.count_nonzero(filled)} pixels): its contours do not close. Close "
                         "them, or give --gt-rule nonzero to read the lines themselves as nucleus")
    return Truth(annotated, FILLED, count_nuclei(annotated))


def read_truth(path: str | os.PathLike, rule: str = "auto", max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Truth:
    """Decode a ground-truth image (PNG/TIFF, 8/16-bit, grey/RGB) and interpret it by ``rule``."""
    path = Path(path)
    return interpret(decode(path, max_pixels), rule, str(path))


# How describe() says each filling rule read an outline GT (the others fill it with its line).
FILLED_HOW = {"auto-interior": "filled without its line",
              "auto-ignore-line": "filled without its line, which counts as neither nucleus nor background"}


def describe(truth: Truth, name: str, rule: str = "auto") -> str:
    """The warning an outline GT gets: what was filled, so a wrong reading stands out."""
    how = FILLED_HOW.get(rule, "filled")
    return (f"{name}: outline ground truth (closed nucleus contours): {how}, {truth.nuclei} nuclei, "
            f"{100 * truth.nucleus_fraction:.2f} % nucleus pixels")
