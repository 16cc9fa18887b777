"""gt_edges: a mask drawn on the image's nuclei crosses half-way at its edge, a larger one outside, a smaller one
inside; an outline GT read with its line sits further out than read without it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
from click.testing import CliRunner

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))

from gt_edges import edge_profile, half_crossing, main, prediction_row  # noqa: E402

CENTRES = ((50, 50), (150, 50), (50, 150), (150, 150))


def field(radius: int = 12) -> np.ndarray:
    """Four dark nuclei of ``radius`` on a bright background, blurred as a focused image's edges are."""
    grey = np.full((200, 200), 200, np.float32)
    for centre in CENTRES:
        cv2.circle(grey, centre, radius, 80, -1)
    return cv2.GaussianBlur(grey, (0, 0), 1.0)


def discs(radius: int) -> np.ndarray:
    mask = np.zeros((200, 200), np.uint8)
    for centre in CENTRES:
        cv2.circle(mask, centre, radius, 1, -1)
    return mask > 0


def test_half_crossing_says_where_the_mask_edge_sits_against_the_image():
    grey = field(12)
    on_edge, larger, smaller = (half_crossing(edge_profile(grey, discs(r))) for r in (12, 14, 10))
    assert abs(on_edge) < 0.5
    assert larger > 1.5 and smaller < -1.5  # two pixels out, two pixels in
    profile = edge_profile(grey, discs(12))
    assert profile[-5] > profile[5] and sorted(profile) == [*range(-5, 0), *range(1, 6)]
    assert half_crossing({}) is None and half_crossing(edge_profile(grey, np.zeros((200, 200), bool))) is None


def test_a_prediction_one_pixel_too_large_scores_better_eroded():
    truth = discs(12)
    row = prediction_row(field(12), truth, discs(13))
    assert row["dice_eroded"] > row["dice"] > row["dice_dilated"]
    assert row["half_crossing"] > 0.5


def test_the_command_reads_both_outline_readings_and_filled_masks(tmp_path: Path):
    grey = field(12)
    cv2.imwrite(str(tmp_path / "EDF000.png"), grey.astype(np.uint8))
    outline = np.zeros((200, 200), np.uint8)
    for centre in CENTRES:
        cv2.circle(outline, centre, 13, 255, 1)  # drawn on the background, just outside each nucleus
    cv2.imwrite(str(tmp_path / "EDF000_GT.png"), outline)
    cv2.imwrite(str(tmp_path / "EDF004.png"), grey.astype(np.uint8))
    cv2.imwrite(str(tmp_path / "EDF004_GT.png"), discs(12).astype(np.uint16) * 32896)
    predictions = tmp_path / "predicted"
    predictions.mkdir()
    cv2.imwrite(str(predictions / "EDF004.png"), discs(12).astype(np.uint8) * 255)
    result = CliRunner().invoke(main, ["--fields", str(tmp_path), "--predictions", str(predictions)])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output.strip().splitlines()[-1])
    edf000, edf004 = record["fields"]["EDF000"], record["fields"]["EDF004"]
    assert edf000["auto"]["form"] == "outline" and edf000["auto"]["nuclei"] == 4
    assert edf000["auto"]["half_crossing"] > edf000["auto-interior"]["half_crossing"] + 0.5
    assert edf004["auto"] == edf004["auto-interior"] and edf004["prediction"]["dice"] == 1.0
    assert set(record["summary"]) == {"auto:filled", "auto:outline", "auto-interior:filled", "auto-interior:outline"}
    bad = CliRunner().invoke(main, ["--fields", str(tmp_path), "--gt-rule", "sideways"])
    assert bad.exit_code != 0 and "--gt-rule" in bad.output
