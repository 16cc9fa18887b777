"""Per-nucleus measurements on predicted (or ground-truth) masks: clean, label, measure (overlays: infer.overlay).

Pure functions on arrays, no TensorFlow. They are written for whole EDF fields up to 8192²: whatever touches
every pixel is vectorised (OpenCV, scipy.ndimage, np.bincount over the foreground pixels only), and per-nucleus
work (contours, convex hulls, the watershed) runs on that nucleus's bounding-box crop only.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import cv2
import numpy as np
from scipy import ndimage

MOMENT_BAND_ROWS = 1024
EDGES = ("top", "bottom", "left", "right")
MEASUREMENT_COLUMNS = (
    "id",
    "centroid_y",
    "centroid_x",
    "area_px",
    "perimeter_px",
    "equivalent_diameter_px",
    "eccentricity",
    "solidity",
    "mean_intensity",
    "mean_probability",
)

_DILATE_3X3 = np.ones((3, 3), np.uint8)
# Distances are kept in 1/8 px steps as integers in float32: exact arithmetic for the morphological
# reconstruction below (float32 holds integers exactly up to 2**24, i.e. distances up to 2 million px).
_DISTANCE_STEPS_PER_PX = 8.0


def _as_binary(mask: np.ndarray) -> np.ndarray:
    """A 2-D bool array: non-zero is nucleus; a 3-channel mask (ISBI ground truth PNGs) counts any channel."""
    array = np.asarray(mask)
    if array.ndim == 3:
        array = array.any(axis=2)
    if array.ndim != 2:
        raise ValueError(f"expected an HxW mask (or HxWxC), got shape {array.shape}")
    return np.ascontiguousarray(array, dtype=bool)


def as_labels(mask_or_labels: np.ndarray) -> np.ndarray:
    """Integer labels for contour drawing: a bool (or 3-channel) mask becomes label 1, integer labels stay."""
    array = np.asarray(mask_or_labels)
    if array.ndim == 3 or array.dtype == bool:
        return _as_binary(array).view(np.uint8)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"expected an HxW bool mask or integer labels, got {array.dtype} {array.shape}")
    return array


def _fill_holes(binary: np.ndarray) -> np.ndarray:
    """Same result as ndimage.binary_fill_holes, but one labelling pass instead of an iterated dilation.

    A hole is a 4-connected background region (the dual of 8-connected nuclei) that does not touch the border.
    """
    background = (~binary).view(np.uint8)
    count, regions = cv2.connectedComponents(background, connectivity=4, ltype=cv2.CV_32S)
    is_hole = np.ones(count, bool)
    is_hole[0] = False  # label 0 is the foreground itself
    for edge in EDGES:  # background reaching the image's edge is not a hole
        is_hole[edge_pixels(regions, edge)] = False
    return binary | is_hole[regions]


def clean_mask(mask: np.ndarray, min_area: int = 0, fill_holes: bool = False,
               exclude_border: bool = False, field_edges: Collection[str] = EDGES) -> np.ndarray:
    """Fill holes inside nuclei (optional), then drop 8-connected components smaller than ``min_area`` px and,
    with ``exclude_border``, those that touch one of the image's ``field_edges`` (nuclei cut by the field of view).

    Holes are filled first, so a nucleus with a hole is kept or dropped by its full size. A cut nucleus cannot be
    measured (its area and shape are partial), and the ISBI 2014 ground truth leaves the nuclei of cells cut by
    the field's edge unannotated, so against it they only count as false positives. ``field_edges`` names which
    of "top", "bottom", "left", "right" are edges of the field: all four for a whole field; for a tile cut from
    one, only those it shares with the field (its inner edges cut nuclei that the ground truth does annotate).
    """
    binary = _as_binary(mask).copy()
    if fill_holes:
        binary = _fill_holes(binary)
    if min_area > 1 or exclude_border:
        _, components, stats, _ = cv2.connectedComponentsWithStats(
            binary.view(np.uint8), connectivity=8, ltype=cv2.CV_32S
        )
        # a lookup per label: one pass over the pixels
        binary = _kept_ids(components, stats[:, cv2.CC_STAT_AREA], min_area, exclude_border, field_edges)[components]
    return binary


def _kept_ids(labels: np.ndarray, areas: np.ndarray, min_area: int, exclude_border: bool,
              field_edges: Collection[str]) -> np.ndarray:
    """Per id (0 = background, never kept): is its area at least ``min_area`` and, with ``exclude_border``, does it
    touch none of ``field_edges``."""
    keep = areas >= min_area
    if exclude_border:
        for edge in check_edges(field_edges):
            keep[edge_pixels(labels, edge)] = False
    keep[0] = False
    return keep


def filter_labels(labels: np.ndarray, min_area: int = 0, exclude_border: bool = False,
                  field_edges: Collection[str] = EDGES) -> np.ndarray:
    """``clean_mask``'s area and border rules on labelled nuclei (each id judged alone); the kept ids are renumbered
    1, 2, … in their old order."""
    labels = np.asarray(labels)
    if labels.size == 0 or int(labels.max()) == 0:
        return labels.copy()
    areas = np.bincount(labels.ravel(), minlength=int(labels.max()) + 1)
    return keep_labels(labels, _kept_ids(labels, areas, min_area, exclude_border, field_edges))


def keep_labels(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``labels`` with only the ids where ``keep`` (bool, one per id, 0 included) holds, renumbered 1, 2, … in their
    old order: nuclei.csv's ids stay consecutive."""
    renumber = np.zeros(keep.size, labels.dtype)
    renumber[keep] = np.arange(1, int(keep.sum()) + 1, dtype=labels.dtype)
    return renumber[labels]


def nuclei_of(mask: np.ndarray, min_area: int = 0, fill_holes: bool = False, exclude_border: bool = False,
              field_edges: Collection[str] = EDGES, split_touching: bool = False) -> np.ndarray:
    """The labelled nuclei of a predicted mask after the clean-up flags. With ``split_touching`` the blobs are split
    (a background line between touching nuclei) before the area and border rules, which then judge each nucleus
    alone: a whole nucleus touching one cut by the edge is kept, a small split piece dropped."""
    if not split_touching:
        return label_nuclei(clean_mask(mask, min_area, fill_holes, exclude_border, field_edges))
    labels = separate_touching(label_nuclei(clean_mask(mask, 0, fill_holes), split_touching=True))
    return filter_labels(labels, min_area, exclude_border, field_edges)


def check_edges(edges: Collection[str]) -> tuple[str, ...]:
    """The edges in EDGES order; a ValueError names an unknown one."""
    unknown = sorted(set(edges) - set(EDGES))
    if unknown:
        raise ValueError(f"unknown edge {', '.join(map(repr, unknown))}: use {', '.join(EDGES)}")
    return tuple(edge for edge in EDGES if edge in edges)


def edge_pixels(array: np.ndarray, edge: str) -> np.ndarray:
    """The row or column of ``array`` along one of its edges."""
    return {"top": array[0], "bottom": array[-1], "left": array[:, 0], "right": array[:, -1]}[edge]


def _reconstruct_by_dilation(seed: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """Grey reconstruction of ``seed`` under ``limit`` (float32, 8-connected), by iterated geodesic dilation.

    Only used on one nucleus's crop, where it converges in a few iterations.
    """
    current = np.minimum(seed, limit)
    while True:
        grown = np.minimum(cv2.dilate(current, _DILATE_3X3), limit)
        if np.array_equal(grown, current):
            return current
        current = grown


def _distance_peak_markers(
    height: np.ndarray, inside: np.ndarray, min_distance: float, min_neck_depth_px: float
) -> np.ndarray:
    """Markers (int32, 1..k) of the distance maxima that deserve a nucleus each.

    h-maxima: a maximum counts only when the neck to any higher maximum is more than ``min_neck_depth_px``
    narrower (in half-width) than it, so the small bumps of a digitised elongated nucleus never split it.
    Of maxima closer than ``min_distance``, the higher one is kept.
    """
    depth = round(min_neck_depth_px * _DISTANCE_STEPS_PER_PX)
    flattened = _reconstruct_by_dilation(height - depth, height)
    tops = (flattened - _reconstruct_by_dilation(flattened - 1, flattened) > 0) & inside
    count, regions = cv2.connectedComponents(tops.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    if count <= 2:
        return regions
    ids = np.arange(1, count)
    centres = np.array(ndimage.center_of_mass(tops, regions, ids))
    peaks = ndimage.maximum(height, regions, ids)
    kept: list[int] = []
    for index in np.argsort(-peaks, kind="stable"):
        if all(math.dist(centres[index], centres[other]) >= min_distance for other in kept):
            kept.append(index)
    new_ids = np.zeros(count, np.int32)
    new_ids[ids[sorted(kept)]] = np.arange(1, len(kept) + 1, dtype=np.int32)
    return new_ids[regions]


def _flood_from_markers(markers: np.ndarray, height: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Marker-controlled watershed on the distance map: flood from the maxima downwards, level by level.

    At each level every basin grows through the pixels at or above it until they are all taken, so basins meet
    along the necks. A pixel reached by two basins at once joins the one with more 8-neighbours there, which
    keeps the meeting line from drifting towards one nucleus level after level. (scipy's watershed_ift breaks
    such ties always in favour of the same marker and hands it most of the other nucleus.)
    """
    basins = markers.astype(np.uint8 if markers.max() < 255 else np.uint16)
    basin_ids = np.arange(1, int(markers.max()) + 1)
    step = _DISTANCE_STEPS_PER_PX / 2
    for level in np.arange(height.max(), -step, -step):
        reachable = inside & (height >= level)
        while True:
            frontier = reachable & (basins == 0) & (cv2.dilate(basins, _DILATE_3X3) > 0)
            if not frontier.any():
                break
            votes = [
                cv2.boxFilter(
                    (basins == basin_id).view(np.uint8), -1, (3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT
                )[frontier]
                for basin_id in basin_ids
            ]
            basins[frontier] = basin_ids[np.argmax(votes, axis=0)]
    return basins.astype(np.int32)


def _split_component(inside: np.ndarray, min_distance: float, min_neck_depth_px: float) -> np.ndarray:
    """Watershed of one component (bool crop padded with background): int32 pieces 1..k, 0 outside."""
    distance = cv2.distanceTransform(inside.view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    height = np.round(distance * _DISTANCE_STEPS_PER_PX).astype(np.float32)
    markers = _distance_peak_markers(height, inside, min_distance, min_neck_depth_px)
    if markers.max() <= 1:
        return inside.astype(np.int32)
    return _flood_from_markers(markers, height, inside)


def label_nuclei(
    mask: np.ndarray, split_touching: bool = False, min_distance: int = 5, min_neck_depth_px: float = 1.0
) -> np.ndarray:
    """Label nuclei (int32, 0 = background, ids consecutive from 1 in raster order of the components).

    Labels are the 8-connected components. With ``split_touching`` a component is split by a watershed of its
    distance transform, one nucleus per distance maximum that is at least ``min_distance`` px from a higher one
    and stands more than ``min_neck_depth_px`` above the neck joining them. On the pixel grid two discs of radius
    r with centres 1.4 r apart have a neck about 0.2 r deep, so the default splits them from r ≈ 10 px (nuclei
    here are 20–30 px wide); an ellipse has a single maximum and stays whole, even with a ragged outline.
    """
    binary = _as_binary(mask)
    count, components = cv2.connectedComponents(binary.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    if not split_touching or count <= 1:
        return components
    labels = np.zeros_like(components)
    # Two maxima min_distance apart need a bounding box at least min_distance/√2 px across in some direction.
    smallest_splittable_extent = min_distance / math.sqrt(2)
    next_id = 1
    for component_id, box in enumerate(ndimage.find_objects(components), start=1):
        inside = components[box] == component_id
        target = labels[box]
        extent = max(box[0].stop - box[0].start, box[1].stop - box[1].start) - 1
        if extent < smallest_splittable_extent:
            target[inside] = next_id
            next_id += 1
            continue
        pieces = _split_component(np.pad(inside, 1), min_distance, min_neck_depth_px)[1:-1, 1:-1]
        target[inside] = pieces[inside] + (next_id - 1)
        next_id += int(pieces.max())
    return labels


def separate_touching(labels: np.ndarray) -> np.ndarray:
    """The labels with a background line between touching nuclei: every pixel that has an 8-neighbour of a lower,
    non-zero id becomes 0, so the mask ``labels > 0`` holds the split nuclei apart (8-connected) and a label image,
    its polygons and the mask agree pixel for pixel."""
    padded = np.pad(labels, 1)
    height, width = labels.shape
    touching = np.zeros(labels.shape, bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                neighbour = padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
                touching |= (neighbour > 0) & (neighbour < labels)
    separated = labels.copy()
    separated[touching] = 0
    return separated


def label_means(labels: np.ndarray, maps: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Pixel count per label id (0..max) and, for each map (HxW, or HxWxC read as grey: ``_grey_values``), its
    mean under each label (0 where a label has no pixel; id 0, the background, counts none). Sums run band by
    band, so memory stays bounded by the band on a large scan."""
    labels = np.asarray(labels)
    size = int(labels.max()) + 1 if labels.size else 1
    width = labels.shape[1]
    count = np.zeros(size)
    sums = np.zeros((len(maps), size))
    for y0 in range(0, labels.shape[0], MOMENT_BAND_ROWS):
        band = labels[y0 : y0 + MOMENT_BAND_ROWS]
        flat_index = np.flatnonzero(band)
        if flat_index.size == 0:
            continue
        ids = band.reshape(-1)[flat_index].astype(np.intp)
        count += np.bincount(ids, None, size)
        for row, values in enumerate(maps):
            grey = _grey_values(values[y0 : y0 + MOMENT_BAND_ROWS], flat_index, (band.shape[0], width))
            sums[row] += np.bincount(ids, grey, size)
    return count, list(sums / np.maximum(count, 1.0))


def drop_unconfident(labels: np.ndarray, probability: np.ndarray, min_confidence: float) -> np.ndarray:
    """The labels without the nuclei whose mean ``probability`` (HxW: floats in 0..1, or uint8 0..255 read as
    k/255) is below ``min_confidence``; the kept ids are renumbered 1, 2, … in their old order. A blob the model
    is unsure of all over is dropped whole; its outline is not moved (that is what --threshold does)."""
    labels = np.asarray(labels)
    probability = np.asarray(probability)
    if probability.shape != labels.shape:
        raise ValueError(f"probability shape {probability.shape} does not match the labels' {labels.shape}")
    if labels.size == 0 or int(labels.max()) == 0:
        return labels.copy()
    count, (mean,) = label_means(labels, [probability])
    if probability.dtype == np.uint8:
        mean /= 255.0
    keep = (count > 0) & (mean >= min_confidence)  # the background (id 0) counts no pixel: never kept
    return keep_labels(labels, keep)


def _grey_values(image: np.ndarray, flat_index: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Grey level (float64) of the image at the given flat pixel indices; colour is the mean over channels."""
    image = np.asarray(image)
    if image.shape[:2] != shape or image.ndim not in (2, 3):
        raise ValueError(f"image shape {image.shape} does not match the labels' {shape}")
    if image.ndim == 2:
        return image.reshape(-1)[flat_index].astype(np.float64)
    channels = image.shape[2]
    pixels = image.reshape(-1, channels)[flat_index]
    if channels == 4:  # RGBA: alpha is not a grey level
        pixels = pixels[:, :3]
    return pixels.mean(axis=1, dtype=np.float64)


def outer_contours(inside: np.ndarray, offset: tuple[int, int] = (0, 0)) -> Sequence[np.ndarray]:
    """External contours of a bool crop; padded so objects touching the crop edge close on it in any OpenCV."""
    padded = cv2.copyMakeBorder(inside.view(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    contours, _ = cv2.findContours(
        padded, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(offset[0] - 1, offset[1] - 1)
    )
    return contours


# nuclei.csv's geometry from scikit-image's regionprops (the field's library) where it is as good or better: the
# Crofton perimeter is within 1-4 % of 2πr on digital discs where the boundary-pixel estimate is 5 % over. Its
# solidity is not: its hull runs through the pixels' edge midpoints and calls a digital disc of radius 10 only 0.93
# solid, so solidity stays ours (the hull of pixel centres, counted exactly by Pick's theorem: a disc is 1).
GEOMETRY = ("label", "centroid", "area", "perimeter_crofton", "equivalent_diameter_area", "eccentricity")


def hull_pixels(inside: np.ndarray) -> int:
    """The number of pixels whose centres lie in the convex hull of a bool crop's pixel centres.

    The hull's vertices are pixel centres, so Pick's theorem counts those pixels exactly from the polygon:
    area + boundary lattice points / 2 + 1. A convex nucleus gets solidity 1 and a 1-pixel one too, where the
    polygon's own area (through boundary pixel centres) would under-count and push solidity above 1.
    """
    contours = outer_contours(inside)
    hull = cv2.convexHull(np.concatenate(contours) if len(contours) > 1 else contours[0]).reshape(-1, 2)
    steps = np.abs(hull - np.roll(hull, 1, axis=0))
    boundary_points = int(np.gcd(steps[:, 0], steps[:, 1]).sum())
    return round(cv2.contourArea(hull) + boundary_points / 2 + 1)


def measure_nuclei(labels: np.ndarray, image: np.ndarray, probability: np.ndarray | None = None) -> list[dict]:
    """One dict per nucleus label (keys MEASUREMENT_COLUMNS), ordered by label id; [] when there is none.

    Geometry is scikit-image's ``regionprops``: centroid (row, column) and area in px; perimeter its Crofton
    estimate; equivalent diameter of the disc of that area; eccentricity of the ellipse with the same second
    moments (0 for a disc, towards 1 for a line). Solidity = area / the pixels whose centres lie in the convex hull
    of the nucleus' pixel centres (``hull_pixels``). mean_intensity is the mean grey level (mean over
    channels for colour, alpha left out) of ``image`` (HxW or HxWxC, any bit depth) under the nucleus.
    mean_probability is the mean of ``probability`` (HxW: floats in 0..1, or uint8 0..255 read as k/255) under the
    nucleus, the model's confidence in it; NaN without a probability map. Intensity sums run band by band, so
    memory stays bounded by the band on a large scan.
    """
    from skimage.measure import regionprops_table

    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"expected HxW integer labels, got {labels.dtype} {labels.shape}")
    if np.asarray(image).shape[:2] != labels.shape:
        raise ValueError(f"image shape {np.asarray(image).shape} does not match the labels' {labels.shape}")
    if probability is not None:
        probability = np.asarray(probability)
        if probability.shape != labels.shape:
            raise ValueError(f"probability shape {probability.shape} does not match the labels' {labels.shape}")
        scale = 1 / 255 if probability.dtype == np.uint8 else 1.0
    if labels.size == 0 or labels.min() < 0:
        if labels.size and labels.min() < 0:
            raise ValueError("labels must be non-negative (0 = background)")
        return []
    size = int(labels.max()) + 1
    if size == 1:
        return []

    maps = [np.asarray(image)] + ([probability] if probability is not None else [])
    _, means = label_means(labels, maps)
    mean_intensity = means[0]
    mean_probability = means[1] * scale if probability is not None else np.full(size, np.nan)

    table = regionprops_table(labels, properties=GEOMETRY)
    boxes = ndimage.find_objects(labels)
    nuclei = []
    for row, label_id in enumerate(table["label"]):
        nuclei.append(
            {
                "id": int(label_id),
                "centroid_y": float(table["centroid-0"][row]),
                "centroid_x": float(table["centroid-1"][row]),
                "area_px": int(table["area"][row]),
                "perimeter_px": float(table["perimeter_crofton"][row]),
                "equivalent_diameter_px": float(table["equivalent_diameter_area"][row]),
                "eccentricity": float(table["eccentricity"][row]),
                "solidity": float(table["area"][row] / hull_pixels(labels[boxes[label_id - 1]] == label_id)),
                "mean_intensity": float(mean_intensity[label_id]),
                "mean_probability": float(mean_probability[label_id]),
            }
        )
    return nuclei
