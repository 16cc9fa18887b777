"""miss_kinds: each annotated nucleus a run does not find is measured on its field and sorted into edge, small,
pale, dark-clump or other; found nuclei are left out, and a partial detection is told from a miss."""

from __future__ import annotations

import json
import sys

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))

from miss_kinds import found_and_touched, kind_of, main, nucleus_measures  # noqa: E402

BACKGROUND, CLUMP = 200, 110


def field() -> tuple[np.ndarray, np.ndarray, dict[str, tuple[int, int]]]:
    """A grey field on a light background with one dark clump, and its ground truth: five nuclei, one of each kind."""
    image = np.full((240, 240), BACKGROUND, np.uint8)
    image[140:230, 20:110] = CLUMP  # a dark cytoplasm clump
    truth = np.zeros((240, 240), np.uint8)
    centres = {"dark": (60, 60), "pale": (170, 60), "clump": (65, 185), "edge": (228, 150), "small": (170, 170)}
    greys = {"dark": 140, "pale": 188, "clump": 50, "edge": 140, "small": 140}
    for name, (x, y) in centres.items():
        radius = 4 if name == "small" else 12
        cv2.circle(image, (x, y), radius, greys[name], -1)
        cv2.circle(truth, (x, y), radius, 255, -1)
    return image, truth > 0, centres


def by_centre(nuclei: list[dict], centres: dict[str, tuple[int, int]]) -> dict[str, dict]:
    return {name: next(n for n in nuclei if abs(n["centre"][0] - x) <= 1 and abs(n["centre"][1] - y) <= 1)
            for name, (x, y) in centres.items()}


def test_contrast_and_surroundings_are_measured_against_the_inpainted_background():
    image, truth, centres = field()
    labels, nuclei = nucleus_measures(image, truth)
    assert labels.max() == len(nuclei) == 5
    named = by_centre(nuclei, centres)
    assert named["dark"]["contrast"] == pytest.approx(BACKGROUND - 140, abs=2)
    assert named["pale"]["contrast"] == pytest.approx(BACKGROUND - 188, abs=2)
    assert named["clump"]["contrast"] == pytest.approx(CLUMP - 50, abs=2)
    assert named["clump"]["surroundings"] == pytest.approx(CLUMP, abs=2)
    assert named["dark"]["surroundings"] == pytest.approx(BACKGROUND, abs=2)
    assert named["edge"]["edge_gap"] == 0  # radius 12 at y = 228 reaches the last row
    assert named["dark"]["edge_gap"] == 48


def test_kinds_follow_their_order_edge_small_pale_dark_clump_other():
    image, truth, centres = field()
    named = by_centre(nucleus_measures(image, truth)[1], centres)
    median_contrast, median_surroundings = 60.0, 200.0
    kinds = {name: kind_of(n, median_contrast, median_surroundings) for name, n in named.items()}
    assert kinds == {"dark": "other", "pale": "pale", "clump": "dark_clump", "edge": "edge", "small": "small"}
    # A pale nucleus in a clump is pale: paleness is named first.
    assert kind_of({**named["pale"], "surroundings": 100.0}, median_contrast, median_surroundings) == "pale"


def test_a_correct_detection_needs_more_than_six_tenths_of_both_objects():
    truth = np.zeros((100, 100), bool)
    cv2.circle(truth.view(np.uint8), (25, 25), 10, 1, -1)
    cv2.circle(truth.view(np.uint8), (75, 25), 10, 1, -1)
    cv2.circle(truth.view(np.uint8), (25, 75), 10, 1, -1)
    prediction = np.zeros_like(truth)
    cv2.circle(prediction.view(np.uint8), (25, 25), 10, 1, -1)  # the same disc: found
    cv2.circle(prediction.view(np.uint8), (75, 25), 4, 1, -1)  # a small blob inside: touched, not found
    labels, nuclei = nucleus_measures(np.full((100, 100), 200, np.uint8), truth)
    found, touched = found_and_touched(labels, len(nuclei), prediction)
    state = {n["centre"]: (bool(found[n["id"]]), bool(touched[n["id"]])) for n in nuclei}
    assert state == {(25, 25): (True, True), (75, 25): (False, True), (25, 75): (False, False)}


def write_run(root, prediction_of) -> None:
    """A whole-field bench-folds run folder of one fold and one field, its saved mask drawn by ``prediction_of``."""
    image, truth, centres = field()
    test = root / "folds" / "fold0" / "test"
    masks = root / "fold0" / "infer"
    (masks / "overlays").mkdir(parents=True)
    test.mkdir(parents=True)
    cv2.imwrite(str(test / "EDF900.png"), image)
    cv2.imwrite(str(test / "EDF900_GT.png"), truth.astype(np.uint8) * 255)
    cv2.imwrite(str(masks / "EDF900.png"), prediction_of(truth, centres).astype(np.uint8) * 255)
    cv2.imwrite(str(masks / "overlays" / "EDF900.png"), cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))


def test_the_command_counts_every_nucleus_not_found_by_kind_and_draws_them(tmp_path):
    def only_the_dark_one(truth, centres):
        prediction = np.zeros_like(truth)
        cv2.circle(prediction.view(np.uint8), centres["dark"], 12, 1, -1)
        cv2.circle(prediction.view(np.uint8), centres["clump"], 3, 1, -1)  # partial
        return prediction

    run = tmp_path / "run"
    write_run(run, only_the_dark_one)
    picture = tmp_path / "misses.png"
    result = CliRunner().invoke(main, ["--runs", str(run), "--picture", str(picture)])
    assert result.exit_code == 0, result.output
    row = json.loads(result.output.strip().splitlines()[-1])["runs"][str(run)]
    assert (row["nuclei"], row["not_found"], row["missed"], row["partial"]) == (5, 4, 3, 1)
    assert {kind: row[kind] for kind in ("edge", "small", "pale", "dark_clump", "other")} == {
        "edge": 1, "small": 1, "pale": 1, "dark_clump": 1, "other": 0}
    assert cv2.imread(str(picture)) is not None


def test_a_missing_saved_mask_is_refused_by_name(tmp_path):
    run = tmp_path / "run"
    write_run(run, lambda truth, centres: truth)
    (run / "fold0" / "infer" / "EDF900.png").unlink()
    result = CliRunner().invoke(main, ["--runs", str(run)])
    assert result.exit_code != 0
    assert "EDF900.png: no saved mask" in result.output
