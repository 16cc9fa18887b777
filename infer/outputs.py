"""Instance outputs that QuPath, napari and ImageJ load: a 16-bit label image and GeoJSON polygons whose ids are the
``id`` column of nuclei.csv. Pure functions; the caller writes the bytes.

GeoJSON (RFC 7946 structure, image pixel coordinates): a ``FeatureCollection``; one ``Feature`` per nucleus with a
``Polygon`` geometry whose first ring is the nucleus's outer outline and any further rings its holes, each ring
closed (first point = last). Coordinates are (x, y) in pixels with the image's top-left corner at (0, 0) and pixel
(column c, row r) covering [c, c+1) × [r, r+1), as QuPath places them; the outline runs along the pixels' edges
(marching squares at 0.5 through the pixel centres, 8-connected), so a polygon's area is the nucleus's pixel count
to within the corners it cuts (an eighth of a pixel each; a one-pixel hole becomes a diamond of half a pixel).
Properties follow QuPath 0.4+'s own export:
``objectType: "detection"``, ``classification: {"name": "Nucleus", "color": [r, g, b]}``, ``measurements``
(name → number: the nuclei.csv columns), plus ``id`` (the label id) and ``name``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

LABEL_MAX = 65535  # labels/<stem>.png is 16-bit; more nuclei go to a 32-bit labels/<stem>.tif
CLASSIFICATION = {"name": "Nucleus", "color": [255, 40, 40]}  # the overlay's prediction red


def label_image(labels: np.ndarray) -> tuple[np.ndarray, str]:
    """(instance ids, file suffix): uint16 for a 16-bit PNG, or, past 65535 nuclei, int32 for an uncompressed
    32-bit TIFF (which napari, Fiji and tifffile read without extra codecs)."""
    top = int(labels.max()) if labels.size else 0
    if top > LABEL_MAX:
        return labels.astype(np.int32), ".tif"
    return labels.astype(np.uint16), ".png"


def _ring_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def outline_rings(inside: np.ndarray, offset: tuple[int, int] = (0, 0)) -> list[np.ndarray]:
    """Closed rings (k×2 float, x y) of one nucleus's bool crop at ``offset`` (row, column of the crop's corner):
    the outer outline first, then its holes, turned by RFC 7946's right-hand rule in their own coordinates."""
    from skimage.measure import find_contours

    padded = np.pad(inside, 1).astype(np.float32)
    contours = find_contours(padded, 0.5, fully_connected="high")  # the nucleus 8-connected, as it was labelled
    rings = []
    for contour in contours:
        # (row, col) in the padded crop, pixel centres at integers → (x, y) with pixel edges at integers
        ring = np.column_stack([contour[:, 1] - 1 + offset[1] + 0.5, contour[:, 0] - 1 + offset[0] + 0.5])
        if not np.array_equal(ring[0], ring[-1]):
            ring = np.vstack([ring, ring[:1]])
        rings.append(ring)
    rings.sort(key=lambda ring: -abs(_ring_area(ring)))
    # RFC 7946 (GeoJSON): the outer ring counter-clockwise in its x, y (a positive shoelace area, as shapely's
    # orient() makes it; clockwise on screen, where y points down), holes the other way. QuPath reads either.
    return [ring if (_ring_area(ring) > 0) == (index == 0) else ring[::-1] for index, ring in enumerate(rings)]


def _number(value):
    if isinstance(value, float | np.floating):
        return None if math.isnan(value) else round(float(value), 6)
    return int(value) if isinstance(value, int | np.integer) else value


def nuclei_geojson(labels: np.ndarray, nuclei: Sequence[dict]) -> dict:
    """A FeatureCollection with one Polygon per row of ``nuclei`` (measure_nuclei's dicts, keyed by ``id``)."""
    boxes = ndimage.find_objects(labels)
    features = []
    for nucleus in nuclei:
        label_id = int(nucleus["id"])
        box = boxes[label_id - 1]
        rings = outline_rings(labels[box] == label_id, (box[0].start, box[1].start))
        features.append({
            "type": "Feature",
            "id": label_id,
            "geometry": {"type": "Polygon", "coordinates": [np.round(ring, 3).tolist() for ring in rings]},
            "properties": {
                "objectType": "detection",
                "name": f"Nucleus {label_id}",
                "classification": dict(CLASSIFICATION),
                "measurements": {key: _number(value) for key, value in nucleus.items() if key != "id"},
            },
        })
    return {"type": "FeatureCollection", "features": features}
