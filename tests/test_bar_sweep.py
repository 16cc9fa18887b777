"""bar_sweep: every bar scored from masks made without one keeps what infer's own bar keeps, and each fold's bar
is chosen on the other folds' fields alone."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import cv2
import numpy as np
from click.testing import CliRunner

from infer.measure import drop_unconfident, label_nuclei, measure_nuclei
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))

from bar_sweep import drop_below, main  # noqa: E402


def discs(shape: tuple[int, int], centres: list[tuple[int, int]], radius: int = 10) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    for x, y in centres:
        cv2.circle(mask, (x, y), radius, 1, -1)
    return mask.astype(bool)


def test_dropping_by_the_tables_mean_probability_keeps_what_infers_bar_keeps():
    rng = np.random.default_rng(7)
    centres = [(30 + 50 * (k % 4), 30 + 50 * (k // 4)) for k in range(12)]
    labels = label_nuclei(discs((200, 220), centres))
    # Each nucleus its own level of confidence, noisy within it: some fall on each side of every bar below.
    probability = np.zeros(labels.shape, np.float32)
    for label_id, level in enumerate(np.linspace(0.3, 0.99, 12), start=1):
        inside = labels == label_id
        probability[inside] = np.clip(level + rng.normal(0, 0.05, inside.sum()), 0, 1)
    confidence = np.round(probability * 255).astype(np.uint8)  # as infer keeps it
    grey = np.zeros((*labels.shape, 3), np.uint8)
    table = {row["id"]: row["mean_probability"] for row in measure_nuclei(labels, grey, confidence)}  # nuclei.csv
    for bar in (0.0, 0.5, 0.7, 0.85, 0.95):
        kept = drop_below(labels, table, bar)
        assert np.array_equal(kept, drop_unconfident(labels, confidence, bar) > 0), bar
        assert 0 < int(label_nuclei(kept).max()) < 12 or bar == 0.0
    assert np.array_equal(drop_below(labels, table, 0.0), labels > 0)
    at_the_bar = {label_id: 0.85 for label_id in table}  # infer keeps a nucleus whose mean equals the bar
    assert np.array_equal(drop_below(labels, at_the_bar, 0.85), labels > 0)


def write_fold(run: Path, fold: int, field: str, truth: np.ndarray, prediction: np.ndarray,
               confidences: list[float], options: dict | None = None) -> Path:
    """One fold of a bench-folds run folder: its held-out field's GT, and masks + nuclei table made without a bar."""
    test = run / "folds" / f"fold{fold}" / "test"
    test.mkdir(parents=True)
    cv2.imwrite(str(test / f"{field}_GT.png"), truth.astype(np.uint8) * 255)
    predictions = run / f"fold{fold}" / "reinfer-no-bar"
    predictions.mkdir(parents=True)
    cv2.imwrite(str(predictions / f"{field}.png"), prediction.astype(np.uint8) * 255)
    with (predictions / "nuclei.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "id", "mean_probability"])
        writer.writerows([f"{field}.png", k, value] for k, value in enumerate(confidences, start=1))
    record = {"options": {"min_confidence": 0.0, "split_touching": False, "gt_rule": "auto", **(options or {})}}
    (predictions / "infer.json").write_text(json.dumps(record))
    return predictions


def test_each_folds_bar_comes_from_the_other_folds_and_the_ceiling_from_the_field_itself(tmp_path: Path):
    run = tmp_path / "run"
    nuclei = [(40, 40), (120, 40), (40, 120)]
    truth = discs((200, 200), nuclei)
    # Fold 0's field: every nucleus found, sure, and one unsure extra object (a bar of 0.7 drops it).
    write_fold(run, 0, "EDF900", truth, discs((200, 200), [*nuclei, (150, 150)]), [0.95, 0.95, 0.95, 0.6])
    # Fold 1's field: every nucleus found and no extra, but one nucleus unsure (a bar of 0.7 loses it).
    write_fold(run, 1, "EDF901", truth, truth, [0.95, 0.95, 0.6])
    result = CliRunner().invoke(main, ["--runs", str(run), "--bars", "0,0.5,0.7,0.85"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.output.strip().splitlines()[-1])[str(run)]
    # Fold 1's field wants the lowest bar, so fold 0 gets it; fold 0's field wants 0.7 or more, so fold 1 gets 0.7.
    assert row["chosen_bars"] == {"0": 0.0, "1": 0.7}
    assert row["field_best_bars"] == {"EDF900": 0.7, "EDF901": 0.0}
    assert row["ceiling"]["f1_fields"] == 1.0 and row["ceiling"]["nucleus_dice_fields"] == 1.0
    assert row["fields"]["EDF900"]["0"]["n_extra"] == 1 and row["fields"]["EDF900"]["0.7"]["n_extra"] == 0
    assert row["fields"]["EDF901"]["0.85"]["n_missed"] == 1
    # Scored at the bars the other fold chose, both folds keep their error: F1 6/7 and 4/5.
    assert row["chosen"]["f1"] == round((6 / 7 + 4 / 5) / 2, 4)
    assert row["chosen"]["nucleus_dice"] < 1.0 and row["fixed"]["0"]["f1"] == round((6 / 7 + 1) / 2, 4)
    assert row["fixed"]["0.85"] == row["fixed"]["0.7"]


def test_masks_made_with_a_bar_or_a_table_missing_nuclei_are_refused_by_name(tmp_path: Path):
    truth = discs((100, 100), [(40, 40)])
    barred = write_fold(tmp_path / "barred", 0, "EDF900", truth, truth, [0.9], {"min_confidence": 0.85})
    refused = CliRunner().invoke(main, ["--runs", str(tmp_path / "barred")])
    assert refused.exit_code == 1 and str(barred / "infer.json") in refused.output
    short = write_fold(tmp_path / "short", 0, "EDF900", truth, discs((100, 100), [(40, 40), (80, 80)]), [0.9])
    refused = CliRunner().invoke(main, ["--runs", str(tmp_path / "short")])
    assert refused.exit_code == 1 and str(short / "EDF900.png") in refused.output
    assert "no mean_probability" in refused.output
    bad_bars = CliRunner().invoke(main, ["--runs", str(tmp_path / "short"), "--bars", "0,0.9"])
    assert bad_bars.exit_code == 2 and "--bars" in bad_bars.output


def test_a_broken_record_a_missing_table_a_foreign_table_and_one_fold_are_refused_by_name(tmp_path: Path):
    truth = discs((100, 100), [(40, 40)])

    def refused(run: Path) -> str:
        result = CliRunner().invoke(main, ["--runs", str(run)])
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output
        return result.output

    broken = write_fold(tmp_path / "broken", 0, "EDF900", truth, truth, [0.9])
    write_fold(tmp_path / "broken", 1, "EDF901", truth, truth, [0.9])
    (broken / "infer.json").write_text("{not json")
    assert str(broken / "infer.json") in refused(tmp_path / "broken")
    tableless = write_fold(tmp_path / "tableless", 0, "EDF900", truth, truth, [0.9])
    write_fold(tmp_path / "tableless", 1, "EDF901", truth, truth, [0.9])
    (tableless / "nuclei.csv").unlink()
    assert str(tableless / "nuclei.csv") in refused(tmp_path / "tableless")
    # A table of another prediction, with more nuclei than the mask holds.
    foreign = write_fold(tmp_path / "foreign", 0, "EDF900", truth, truth, [0.9, 0.8, 0.7])
    write_fold(tmp_path / "foreign", 1, "EDF901", truth, truth, [0.9])
    output = refused(tmp_path / "foreign")
    assert str(foreign / "EDF900.png") in output and "lacks" in output
    write_fold(tmp_path / "single", 0, "EDF900", truth, truth, [0.9])
    assert "one fold" in refused(tmp_path / "single")
