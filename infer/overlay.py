"""Overlays: nucleus contours (and the ground truth's, beneath) drawn on the image, with a key."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from scipy import ndimage

from infer.measure import as_labels, outer_contours


def _label_contours(mask_or_labels: np.ndarray, shape: tuple[int, int]) -> list[np.ndarray]:
    """Outer contours of every label (full-image coordinates), each found on its own bounding-box crop."""
    labels = as_labels(mask_or_labels)
    if labels.shape != shape:
        raise ValueError(f"mask shape {labels.shape} does not match the image's {shape}")
    contours: list[np.ndarray] = []
    for label_id, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is not None:
            contours.extend(outer_contours(labels[box] == label_id, offset=(box[1].start, box[0].start)))
    return contours


LEGEND_MIN_WIDTH = 256  # narrower images get no legend: it would hide what it explains


def draw_legend(overlay: np.ndarray, entries: Sequence[tuple[str, tuple[int, int, int], int]]) -> np.ndarray:
    """A key in the top-left corner (in place): one line sample of each (label, colour, thickness)."""
    scale = min(max(overlay.shape[1] / 1024, 0.8), 2.0)
    font, font_scale, line_height = cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, int(round(20 * scale))
    sample = int(round(28 * scale))
    widths = [cv2.getTextSize(label, font, font_scale, 1)[0][0] for label, _, _ in entries]
    right = 6 + sample + 6 + max(widths) + 8
    bottom = 6 + line_height * len(entries) + 4
    cv2.rectangle(overlay, (2, 2), (right, bottom), (255, 255, 255), -1)
    cv2.rectangle(overlay, (2, 2), (right, bottom), (0, 0, 0), 1)
    for row, (label, colour, thickness) in enumerate(entries):
        y = 6 + line_height * row + line_height // 2
        cv2.line(overlay, (6, y), (6 + sample, y), tuple(int(c) for c in colour), max(thickness, 1))
        cv2.putText(overlay, label, (6 + sample + 6, y + int(5 * scale)), font, font_scale, (0, 0, 0), 1, cv2.LINE_AA)
    return overlay


def draw_overlay(
    image: np.ndarray,
    mask_or_labels: np.ndarray,
    color: tuple[int, int, int] = (255, 40, 40),
    thickness: int = 1,
    truth: np.ndarray | None = None,
    truth_color: tuple[int, int, int] = (40, 220, 40),
    in_place: bool = False,
    truth_thickness: int = 3,
    legend: bool = True,
) -> np.ndarray:
    """A copy of the HxWx3 uint8 image (or the image itself with ``in_place``, to spare a copy of a large
    scan) with nucleus contours drawn, and ground-truth contours beneath them, wider, so that where the two agree
    the truth shows as a halo around the prediction. Images at least LEGEND_MIN_WIDTH wide get a key.

    A bool (or 3-channel) mask is one label; integer labels get one contour each, so touching nuclei that
    were split show the boundary between them.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got {image.dtype} {image.shape}")
    overlay = image if in_place else image.copy()
    layers = [(truth, truth_color, truth_thickness)] if truth is not None else []
    layers.append((mask_or_labels, color, thickness))
    for outlined, outline_color, width in layers:
        contours = _label_contours(outlined, image.shape[:2])
        if contours:
            cv2.drawContours(overlay, contours, -1, tuple(int(c) for c in outline_color), width)
    if legend and image.shape[1] >= LEGEND_MIN_WIDTH:
        entries = [("prediction", color, thickness)]
        if truth is not None:
            entries.append(("ground truth", truth_color, truth_thickness))
        draw_legend(overlay, entries)
    return overlay
