"""Pictures that explain themselves: each figure carries its titles, key or labels (checked on the drawing
function's output: the key's pixels, or the matplotlib artists it made)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from infer.overlay import LEGEND_MIN_WIDTH, draw_overlay
from prep.stats import plot_stats


def test_overlay_has_a_key_and_truth_shows_where_prediction_agrees():
    shape = (512, 512)
    image = np.full(shape + (3,), 160, np.uint8)
    truth = np.zeros(shape, bool)
    cv2.circle(truth.view(np.uint8), (300, 300), 20, 1, -1)
    overlay = draw_overlay(image, truth.copy(), truth=truth)  # a perfect prediction
    corner = overlay[:40, :110]
    assert (corner == 255).all(axis=2).mean() > 0.5 and (corner == 0).all(axis=2).any()  # white key, black text
    for colour in ((255, 40, 40), (40, 220, 40)):  # a line sample of each in the key, and on the nucleus
        assert (corner == colour).all(axis=2).any() and (overlay[270:330, 270:330] == colour).all(axis=2).any()
    bare = draw_overlay(image, truth.copy(), truth=truth, legend=False)
    assert (bare[:40, :110] == 160).all()
    small = np.full((64, LEGEND_MIN_WIDTH - 1, 3), 160, np.uint8)
    assert (draw_overlay(small, np.zeros(small.shape[:2], bool)) == 160).all()  # no key where it would hide all


def test_epoch_montage_names_its_columns_and_epoch():
    from train.callbacks import montage_sheet

    display = np.full((2, 128, 128, 1), 200, np.uint8)
    truths = np.zeros((2, 128, 128), np.int64)
    sheet = montage_sheet(display, truths, truths, epoch=7)
    header = sheet.shape[0] - 2 * (128 + 4)
    assert header > 10 and sheet.shape[1] == 3 * 128 + 8
    band = sheet[:header]
    for column in range(3):  # dark title text over each of the three columns
        assert (band[:, column * 132 : column * 132 + 128] < 100).any(), column


def test_stats_chart_calls_originals_original_and_keeps_small_splits_visible(tmp_path: Path):
    import matplotlib.pyplot as plt

    table = {"train": {"tiles": 400, "sources": 8, "nucleus_fraction": 0.02, "augmentations": {"none": 40,
                                                                                                "hflipped": 360}},
             "valid": {"tiles": 4, "sources": 1, "nucleus_fraction": 0.02, "augmentations": {"none": 4}},
             "test": {"tiles": 4, "sources": 1, "nucleus_fraction": 0.01, "augmentations": {"none": 4}}}
    captured = {}
    original_savefig = plt.Figure.savefig

    def keep(figure, *args, **kwargs):
        captured["scale"] = figure.axes[0].get_yscale()
        return original_savefig(figure, *args, **kwargs)

    plt.Figure.savefig = keep
    try:
        labels = plot_stats(table, tmp_path / "stats.png")
    finally:
        plt.Figure.savefig = original_savefig
    assert "original" in labels and "none" not in labels
    assert captured["scale"] == "log" and (tmp_path / "stats.png").is_file()


def test_curves_keep_the_pooled_reference_metric_apart(tmp_path: Path):
    from train.runs import curve_panels, plot_curves

    names = ["dice_coef_multiclass", "nucleus_dice", "val_dice_coef_multiclass", "val_nucleus_dice"]
    history = {"epoch": [1, 2, 3], **{name: [0.5, 0.6, 0.7] for name in names}}
    assert curve_panels(names) == [("nucleus metrics", ["nucleus_dice", "val_nucleus_dice"]),
                                   ("pooled with background (the reference's)",
                                    ["dice_coef_multiclass", "val_dice_coef_multiclass"])]
    titles = plot_curves(tmp_path / "metrics.png", history, names, "metrics per epoch")
    assert titles == ["nucleus metrics", "pooled with background (the reference's)"]
    assert plot_curves(tmp_path / "loss.png", {"epoch": [1], "loss": [1.0]}, ["loss"], "loss per epoch") == [
        "loss per epoch"]
