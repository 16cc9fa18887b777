"""bench-peer: StarDist's inputs, augmenter and scoring path; a tiny end-to-end run where StarDist is installed
(the `.[peers]` extra, which CI installs; skipped cleanly elsewhere)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import REPO, write_edf_folder
from tests.test_bench_real import TINY

sys.path.insert(0, str(REPO / "bench"))

from bench_peer import (  # noqa: E402
    PER_FIELD_KEYS,
    augment_like_the_stardist_example,
    instance_labels,
    load_fields,
    main,
    ours_per_field,
    score_fields,
    split_validation,
)


def test_nuclei_become_instances_and_diagonal_contact_does_not_join_them():
    mask = np.zeros((8, 8), bool)
    mask[1:3, 1:3] = True
    mask[3:5, 3:5] = True  # touches the first only at a corner
    mask[6, 6] = True
    labels = instance_labels(mask)
    assert labels.dtype == np.int32 and labels.max() == 3
    np.testing.assert_array_equal(labels > 0, mask)


def test_validation_fields_are_held_out_of_training():
    names = [f"EDF{i:03d}.png" for i in range(8)]
    train, valid = split_validation(names)
    assert valid == ["EDF007.png"] and train == names[:7]
    assert split_validation(names[:2]) == (names[:1], names[1:2])
    with pytest.raises(ValueError, match="at least 2"):
        split_validation(names[:1])


def test_augmenter_moves_image_and_labels_together():
    np.random.seed(0)
    labels = np.zeros((32, 48), np.int32)
    labels[3:9, 5:30] = 1
    labels[20:30, 40:46] = 2
    for _ in range(20):
        x, y = augment_like_the_stardist_example(labels.astype(np.float32), labels)
        assert x.dtype == np.float32 and x.shape == y.shape and sorted(np.unique(y)) == [0, 1, 2]
        # intensity × ≥ 0.6 and noise σ ≤ 0.02: the labelled pixels still stand apart where the labels went
        assert x[y > 0].min() > x[y == 0].max()


def test_scores_with_and_without_the_field_edge_rule():
    truth = np.zeros((64, 64), bool)
    truth[20:30, 20:30] = True
    prediction = truth.copy()
    prediction[0:6, 40:50] = True  # a nucleus cut by the top edge, which the ground truth leaves out
    raw = score_fields({"a.png": truth}, {"a.png": (prediction, 0.5)})
    ruled = score_fields({"a.png": truth}, {"a.png": (prediction, 0.5)}, {})
    assert raw["n_extra"] == 1 and raw["f1"] < 1
    assert ruled["n_extra"] == 0 and ruled["nucleus_dice"] == 1.0 and ruled["f1"] == 1.0
    inner = score_fields({"a.png": truth}, {"a.png": (prediction, 0.5)}, {"a.png": ("bottom",)})
    assert inner["n_extra"] == 1  # its top edge is an inner tile edge: the nucleus there is kept
    assert set(ruled["per_field"]["a.png"]) == set(PER_FIELD_KEYS) and ruled["seconds_per_field"] == 0.5


def test_our_summary_reads_in_the_peer_layout():
    summary = {"nucleus_dice": 0.9, "f1": 0.8, "fnro": 0.1, "n_extra": 2, "n_missed": 1, "train_seconds": 10.0,
               "epochs": 3, "per_image": {"a.png": {"nucleus_dice": 0.9, "f1": 0.8, "fnro": 0.1, "n_extra": 2,
                                                    "n_missed": 1, "infer_seconds": 1.5}}}
    ours = ours_per_field(summary)
    assert ours["per_field"]["a.png"]["seconds"] == 1.5 and ours["seconds_per_field"] == 1.5
    assert set(ours["per_field"]["a.png"]) == set(PER_FIELD_KEYS)


def test_fields_are_read_with_the_ground_truth_as_published(tmp_path: Path):
    folder = write_edf_folder(tmp_path / "EDF", count=1, height=96, width=96)
    filled = cv2.imread(str(folder / "EDF000_GT.png"), cv2.IMREAD_GRAYSCALE)
    contours, _ = cv2.findContours(filled, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    outline = np.zeros_like(filled)
    cv2.drawContours(outline, contours, -1, 255, 1)
    cv2.imwrite(str(folder / "EDF000_GT.png"), outline)
    expected = np.zeros_like(filled)
    cv2.drawContours(expected, contours, -1, 255, -1)  # what those outer contours enclose
    [(name, grey, mask)] = load_fields(folder)
    assert name == "EDF000.png" and grey.ndim == 2 and grey.dtype == np.uint8
    np.testing.assert_array_equal(mask, expected > 0)  # outlines filled, as prep reads them


def test_tiny_peer_run_scores_stardist_on_the_held_out_fields(tmp_path: Path):
    pytest.importorskip("stardist")
    train_edf = write_edf_folder(tmp_path / "train", count=3, height=128, width=128, seed=1)
    test_edf = write_edf_folder(tmp_path / "test", count=2, height=128, width=160, seed=2)
    config = tmp_path / "tiny.config"
    config.write_text(TINY)
    result = CliRunner().invoke(main, ["--train-edf", str(train_edf), "--test-edf", str(test_edf), "--out",
                                       str(tmp_path / "out"), "--config", str(config), "--peer-only",
                                       "--seconds", "3", "--patch", "64", "--steps-per-epoch", "2"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    peer = summary["stardist"]
    assert "ours" not in summary
    assert sorted(peer["per_field"]) == ["EDF000.png", "EDF001.png"]
    assert peer["valid_fields"] == ["EDF002.png"] and "EDF002.png" not in peer["train_fields"]
    assert set(peer["thresholds"]) == {"prob", "nms"} and peer["epochs"] >= 1
    for field in peer["per_field"].values():
        assert set(field) == set(PER_FIELD_KEYS) and 0 <= field["nucleus_dice"] <= 1 and field["seconds"] > 0
    assert 0 <= peer["nucleus_dice"] <= 1 and set(peer["without_edge_rule"]) >= {"nucleus_dice", "f1"}
    assert (tmp_path / "out" / "stardist" / "stardist" / "config.json").is_file()  # StarDist's own model folder
