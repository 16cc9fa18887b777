"""Evaluate the best model on [test]: the reference's evaluation.csv rows first (for comparability), then
the scores that mean something when nuclei are 1–3 % of the pixels, and one row per test tile."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from train.config import Config
from train.data import evaluation_dataset
from train.model import TrainError, load_trained
from train.scores import pool_scores, score_masks

EVALUATION_HEADER = ("metric", "value")  # then the reference's two rows (loss, dice_coef_multiclass), then ours
SCORE_COLUMNS = ("nucleus_dice", "nucleus_iou", "object_precision", "object_recall", "object_f1", "object_dice",
                 "good_dice", "fnro", "tpp", "fpp", "outline_dice", "n_truth", "n_pred", "n_correct", "n_extra",
                 "n_missed", "tp", "fp", "fn", "fp_extra", "fn_missed")


def _foreground(one_hot_or_probabilities: np.ndarray) -> np.ndarray:
    return np.argmax(one_hot_or_probabilities, axis=-1) >= 1


def evaluate(config: Config, overwrite: bool = False, verbose: int | str = "auto") -> dict:
    """Write evaluation.csv and evaluation_per_image.csv in the config's folder; return the pooled scores."""
    target = config.folder / "evaluation.csv"
    per_image_target = config.folder / "evaluation_per_image.csv"
    if not overwrite and target.exists():
        raise TrainError(f"{target} exists (use --overwrite to replace it)")
    images, dataset = evaluation_dataset(config)
    model = load_trained(config)
    keras_scores = model.evaluate(dataset, return_dict=True, verbose=verbose)

    per_image, names = [], iter(images)
    for batch_images, batch_truth in dataset:
        probabilities = model.predict_on_batch(batch_images)
        one_hot = batch_truth.numpy()
        ignored = one_hot.sum(axis=-1) == 0  # rgb_map's IGNORE_CLASS pixels: scored as neither
        for truth, prediction, ignore in zip(_foreground(one_hot), _foreground(np.asarray(probabilities)), ignored,
                                             strict=True):
            per_image.append({"file": Path(next(names)).name,
                              **score_masks(truth, prediction, ignore=ignore if ignore.any() else None)})
    pooled = pool_scores([{k: v for k, v in row.items() if k != "file"} for row in per_image])

    loss_name = config.model.loss
    rows = [(loss_name, keras_scores["loss"]),
            ("dice_coef_multiclass", keras_scores.get("dice_coef_multiclass", float("nan")))]
    rows += [(name, pooled[name]) for name in SCORE_COLUMNS if name in pooled]
    per_image_means = ("nucleus_dice", "nucleus_iou", "outline_dice")
    rows += [(f"mean_per_image_{name}", pooled[f"mean_{name}"]) for name in per_image_means if f"mean_{name}" in pooled]
    temporary = target.with_suffix(".csv.tmp")
    with temporary.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(EVALUATION_HEADER)
        for name, value in rows:
            writer.writerow([name, f"{value:.6g}" if isinstance(value, float) else value])
    temporary.replace(target)
    temporary = per_image_target.with_suffix(".csv.tmp")
    with temporary.open("w", newline="") as handle:
        columns = ["file", *[c for c in SCORE_COLUMNS if c in per_image[0]]]
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in per_image:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    temporary.replace(per_image_target)
    return {"rows": rows, "pooled": pooled, "tiles": len(per_image), "evaluation_csv": str(target),
            "per_image_csv": str(per_image_target)}
