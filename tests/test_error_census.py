"""error_census: lone extra and missed objects are sorted by size, and the as-if-annotated scores add only the
isolated nucleus-sized extras to the ground truth."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
from click.testing import CliRunner

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))

from error_census import SMALL_AREA, field_census, lone_objects, main  # noqa: E402


def disc(mask: np.ndarray, x: int, y: int, radius: int) -> None:
    cv2.circle(mask, (x, y), radius, 1, -1)


def scene() -> tuple[np.ndarray, np.ndarray]:
    """Truth: three nuclei. Prediction: two of them, one nucleus-sized object the truth lacks, one speck."""
    truth, prediction = np.zeros((200, 200), np.uint8), np.zeros((200, 200), np.uint8)
    for x, y in ((40, 40), (120, 40), (40, 140)):
        disc(truth, x, y, 12)
    for x, y in ((40, 40), (120, 40)):
        disc(prediction, x, y, 12)
    disc(prediction, 150, 150, 12)  # nucleus-sized, far from every annotated nucleus
    disc(prediction, 100, 170, 3)  # a speck: 29 px
    return truth.astype(bool), prediction.astype(bool)


def test_lone_objects_are_the_ones_that_touch_nothing():
    truth, prediction = scene()
    _, lone = lone_objects(prediction, truth)
    assert sorted(centre for _, _, centre in lone) == [(100, 170), (150, 150)]
    assert sorted(area < SMALL_AREA for _, area, _ in lone) == [False, True]


def test_the_census_counts_by_size_and_scores_as_if_annotated():
    truth, prediction = scene()
    census = field_census(truth, prediction)
    assert (census["extra_nucleus_sized"], census["extra_small"]) == (1, 1)
    assert (census["missed_nucleus_sized"], census["missed_small"]) == (1, 0)
    assert census["n_extra"] == 2 and census["n_missed"] == 1
    # Scored as it stands: 2 correct of 4 predicted and 3 annotated. Had the disc at (150, 150) been annotated:
    # 3 correct of 4 and 4; the speck stays an extra object.
    assert np.isclose(census["f1"], 2 * 2 / (4 + 3)) and np.isclose(census["f1_if_annotated"], 2 * 3 / (4 + 4))
    assert census["nucleus_dice_if_annotated"] > census["nucleus_dice"]
    assert census["extra_centres"] == [(150, 150)]


def test_the_command_reads_a_bench_folds_run_and_draws_each_extra(tmp_path: Path):
    truth, prediction = scene()
    run = tmp_path / "run"
    (run / "folds" / "fold0" / "test").mkdir(parents=True)
    (run / "fold0" / "infer" / "overlays").mkdir(parents=True)
    cv2.imwrite(str(run / "folds" / "fold0" / "test" / "EDF900_GT.png"), truth.astype(np.uint8) * 255)
    cv2.imwrite(str(run / "fold0" / "infer" / "EDF900.png"), prediction.astype(np.uint8) * 255)
    cv2.imwrite(str(run / "fold0" / "infer" / "overlays" / "EDF900.png"), np.full((200, 200, 3), 200, np.uint8))
    picture = tmp_path / "extras.png"
    result = CliRunner().invoke(main, ["--runs", str(run), "--picture", str(picture)])
    assert result.exit_code == 0, result.output
    row = json.loads(result.output.strip().splitlines()[-1])[str(run)]
    assert row["extra_nucleus_sized"] == 1 and row["fields"]["EDF900"]["missed_nucleus_sized"] == 1
    assert cv2.imread(str(picture)) is not None
    missing = CliRunner().invoke(main, ["--runs", str(run), "--predictions", "reinfer-whole_tta2"])
    assert missing.exit_code == 1 and "no saved mask" in missing.output
