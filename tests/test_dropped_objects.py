"""dropped_objects: the objects a clean-up step removes are found whole and sorted by whether the ground truth has
them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))

from dropped_objects import dropped_objects, main  # noqa: E402


def disc(mask: np.ndarray, x: int, y: int, radius: int) -> None:
    cv2.circle(mask, (x, y), radius, 1, -1)


def scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truth: two nuclei. Before: both, an object the truth lacks, and a sliver of a third object touching the
    second nucleus. After: the first nucleus only, and a shrunken second (kept: it still has pixels)."""
    truth, before, after = (np.zeros((200, 200), np.uint8) for _ in range(3))
    disc(truth, 40, 40, 12)
    disc(truth, 120, 40, 12)
    disc(before, 40, 40, 12)
    disc(before, 120, 40, 12)
    disc(before, 150, 150, 10)  # touches no annotated nucleus
    before[60:64, 20:60] = 1  # a separate object
    truth[60:62, 20:60] = 1  # ... that overlaps the ground truth
    disc(after, 40, 40, 12)
    disc(after, 120, 40, 6)
    return truth.astype(bool), before.astype(bool), after.astype(bool)


def test_only_objects_with_no_pixel_left_count_and_each_is_sorted_by_the_truth():
    truth, before, after = scene()
    dropped = sorted(dropped_objects(before, after, truth))
    assert [(kind, centre) for kind, _, centre in dropped] == [("extra", (150, 150)), ("nucleus", (40, 62))]
    assert dropped[0][1] == int(before[130:170, 130:170].sum()) and dropped[1][1] == 160
    assert dropped_objects(before, before, truth) == []  # nothing removed, nothing counted
    assert dropped_objects(np.zeros_like(before), after, truth) == []
    with pytest.raises(ValueError, match="shapes differ"):
        dropped_objects(before, after[:-1], truth)


def test_the_command_counts_per_run_and_draws_each_dropped_object(tmp_path: Path):
    truth, before, after = scene()
    run = tmp_path / "run"
    (run / "folds" / "fold0" / "test").mkdir(parents=True)
    cv2.imwrite(str(run / "folds" / "fold0" / "test" / "EDF900_GT.png"), truth.astype(np.uint8) * 255)
    for name, mask in (("reinfer-preset", before), ("reinfer-sure", after)):
        (run / "fold0" / name / "overlays").mkdir(parents=True)
        cv2.imwrite(str(run / "fold0" / name / "EDF900.png"), mask.astype(np.uint8) * 255)
        cv2.imwrite(str(run / "fold0" / name / "overlays" / "EDF900.png"), np.full((200, 200, 3), 200, np.uint8))
    picture = tmp_path / "dropped.png"
    args = ["--runs", str(run), "--before", "reinfer-preset", "--after", "reinfer-sure"]
    result = CliRunner().invoke(main, [*args, "--picture", str(picture)])
    assert result.exit_code == 0, result.output
    row = json.loads(result.output.strip().splitlines()[-1])[str(run)]
    assert (row["extra"], row["nucleus"]) == (1, 1) and row["fields"]["EDF900"] == {"extra": 1, "nucleus": 1}
    assert cv2.imread(str(picture)) is not None
    missing = CliRunner().invoke(main, [*args[:4], "--after", "reinfer-absent"])
    assert missing.exit_code == 1 and "no saved mask" in missing.output
