"""Segmentation scores in numpy: boolean masks scored per image and pooled (evaluation, full-size inference, the
benches). The Keras training metrics and losses are ``train.losses``.

Nuclei cover ~1-3 % of an EDF tile, so any score that pools background with nucleus is dominated by background.
We lead with nucleus (foreground) Dice/IoU and object-level scores and keep the reference's pooled
``dice_coef_multiclass`` only for comparability (docs/design.md §2 item 2, §5). This module imports nothing
heavy: ``infer`` scores full-size masks without paying for TensorFlow.

Conventions for empty masks (no NaN anywhere):

* pixel Dice / IoU: truth and prediction both empty -> 1.0 (perfect agreement on "no nucleus").
* object precision: no predicted object -> 1.0 (nothing claimed, nothing wrong); recall: no truth object -> 1.0
  (nothing to find); F1 = 2·correct / (n_truth + n_pred), 1.0 when both are 0. So truth empty and prediction not
  gives precision 0, recall 1, F1 0; truth non-empty and prediction empty gives precision 1, recall 0, F1 0.
* fnro: no truth object -> 0.0 (nothing missed).
* means over an empty set of objects (object_dice without correct detections; good_dice, tpp, fpp without good
  objects): 1.0, 1.0, 1.0, 0.0 when truth and prediction are both empty, else 0.0 (the ISBI 2015 evaluation
  code also turns these NaNs into 0).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import cv2
import numpy as np

NUCLEUS_CLASS = 1
NUCLEUS_MATCH_FRACTION = 0.6  # ISBI 2014 nucleus protocol (Gençtav, Aksoy & Önder 2012): |A∩B|/|A| and |A∩B|/|B|
GOOD_DICE = 0.7  # ISBI 2014 cell protocol: a ground-truth object is segmented "good" when its Dice exceeds this

# Every key score_masks returns, in a stable order (they become CSV columns).
SCORE_KEYS = (
    "nucleus_dice",
    "nucleus_iou",
    "object_precision",
    "object_recall",
    "object_f1",
    "object_dice",
    "good_dice",
    "fnro",
    "tpp",
    "fpp",
    "n_truth",
    "n_pred",
    "n_correct",
    "n_good",
    "n_extra",
    "n_missed",
    "outline_dice",
    "tp",
    "fp",
    "fn",
    "tn",
    "fp_extra",
    "fn_missed",
)


# --------------------------------------------------------------------------------------------------------------------
# numpy: pixel level


def _as_mask_pair(truth, pred) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(truth).astype(bool, copy=False)
    pred = np.asarray(pred).astype(bool, copy=False)
    if truth.shape != pred.shape or truth.ndim != 2:
        raise ValueError(f"truth and prediction must be 2-D masks of one shape, got {truth.shape} and {pred.shape}")
    return truth, pred


def pixel_counts(truth, pred) -> dict[str, int]:
    """Confusion counts of two H×W masks (any non-zero value is nucleus): tp, fp, fn, tn."""
    truth, pred = _as_mask_pair(truth, pred)
    tp = int(np.count_nonzero(truth & pred))
    fp = int(np.count_nonzero(pred)) - tp
    fn = int(np.count_nonzero(truth)) - tp
    return {"tp": tp, "fp": fp, "fn": fn, "tn": truth.size - tp - fp - fn}


def dice_from_counts(tp: float, fp: float, fn: float) -> float:
    """2·tp / (2·tp + fp + fn); 1.0 when truth and prediction are both empty."""
    denominator = 2 * tp + fp + fn
    return 1.0 if denominator == 0 else float(2 * tp / denominator)


def iou_from_counts(tp: float, fp: float, fn: float) -> float:
    """tp / (tp + fp + fn); 1.0 when truth and prediction are both empty."""
    denominator = tp + fp + fn
    return 1.0 if denominator == 0 else float(tp / denominator)


# --------------------------------------------------------------------------------------------------------------------
# numpy: object level


def label_objects(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    """(labels, count): the objects of a boolean mask as the scorer counts them (4- or 8-connected), ids from 1."""
    mask = np.ascontiguousarray(mask).view(np.uint8)
    count, labels = cv2.connectedComponents(mask, connectivity=connectivity, ltype=cv2.CV_32S)
    return labels, count - 1


def overlap_pairs(truth_labels, pred_labels, n_pred) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(truth id, predicted id, intersection in px) for every pair of objects that overlap, ids from 1."""
    both = (truth_labels > 0) & (pred_labels > 0)
    codes = truth_labels[both].astype(np.int64) * (n_pred + 1) + pred_labels[both]
    # Only overlapping pixels are counted, so this stays small however many objects there are.
    codes, intersections = np.unique(codes, return_counts=True)
    return codes // (n_pred + 1), codes % (n_pred + 1), intersections


def _mean_or(values: np.ndarray, empty_value: float) -> float:
    return float(values.mean()) if values.size else empty_value


def object_scores(truth, pred, connectivity: int = 8, ignore=None) -> dict[str, float | int]:
    """Object-level scores of the connected components of prediction (A) and truth (B) (docs/design.md §5).

    ISBI 2014 nucleus protocol: a predicted object is a correct detection of a truth object when
    |A∩B|/|A| > 0.6 and |A∩B|/|B| > 0.6 (both above one half, so matches are one-to-one by construction).
    ``object_precision`` = correct / n_pred, ``object_recall`` = correct / n_truth, ``object_f1``, and
    ``object_dice`` = mean pixel Dice of the correct detections.

    ISBI 2014 cell protocol applied to nuclei: each truth object is paired one-to-one with a predicted object,
    greedily by highest Dice (as the challenge's evaluation code does); unpaired truth objects have Dice 0. A truth
    object is "good" when its Dice > 0.7. ``good_dice`` = mean Dice of good objects, ``fnro`` = share of truth
    objects with Dice <= 0.7, ``tpp`` = mean |A∩B|/|B| over good objects, ``fpp`` = mean |A\\B| / (H·W − |B|) over
    good objects: the pixel false-positive rate with the image as the universe. The challenge page names TPp/FPp
    without formulas; TPp follows the ISBI 2015 evaluation code (TPRp = |A∩B|/|B|), and the FPp values published
    for the challenge data (~0.001-0.007 at Dice ~0.9) only fit this denominator (|A\\B|/|A| would be ~0.1).

    Where the pixel errors are: ``n_extra`` predicted objects overlap no truth object (their ``fp_extra`` pixels
    are part of fp) and ``n_missed`` truth objects overlap no prediction (their ``fn_missed`` pixels are part of fn);
    the rest of fp and fn lies on the outlines of objects that were found.

    Empty cases follow the module's conventions (no NaN). ``connectivity`` is 4 or 8. ``ignore`` (boolean, or
    None): pixels that count for neither side. The predicted objects are found before they are taken out, so one
    blob across an ignored line between two nuclei stays one object, as it was drawn.
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    truth, pred = _as_mask_pair(truth, pred)
    pred_labels, n_pred = label_objects(pred, connectivity)
    if ignore is not None:
        keep = ~np.asarray(ignore, bool)
        truth = truth & keep
        pred_labels = np.where(keep, pred_labels, 0)
        left = np.unique(pred_labels[pred_labels > 0])  # objects with a pixel outside the ignored ones
        renumber = np.zeros(n_pred + 1, np.int32)
        renumber[left] = np.arange(1, left.size + 1, dtype=np.int32)
        pred_labels, n_pred = renumber[pred_labels], int(left.size)
    truth_labels, n_truth = label_objects(truth, connectivity)
    truth_area = np.bincount(truth_labels.ravel(), minlength=n_truth + 1)
    pred_area = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)
    truth_id, pred_id, intersection = overlap_pairs(truth_labels, pred_labels, n_pred)
    pair_truth_area = truth_area[truth_id]
    pair_pred_area = pred_area[pred_id]
    pair_dice = 2.0 * intersection / (pair_truth_area + pair_pred_area)
    both_empty = n_truth == 0 and n_pred == 0

    correct = (intersection > NUCLEUS_MATCH_FRACTION * pair_pred_area) & (
        intersection > NUCLEUS_MATCH_FRACTION * pair_truth_area
    )
    n_correct = int(np.count_nonzero(correct))

    # Greedy one-to-one pairing by highest Dice; only overlapping pairs can have Dice > 0.
    order = np.argsort(-pair_dice, kind="stable")
    truth_used = np.zeros(n_truth + 1, bool)
    pred_used = np.zeros(n_pred + 1, bool)
    matched = []
    for pair in order:
        t, p = truth_id[pair], pred_id[pair]
        if not (truth_used[t] or pred_used[p]):
            truth_used[t] = pred_used[p] = True
            matched.append(pair)
    matched = np.asarray(matched, dtype=np.intp)
    good = matched[pair_dice[matched] > GOOD_DICE]
    n_good = int(good.size)
    false_positive_px = pair_pred_area[good] - intersection[good]
    background_px = np.maximum(truth.size - pair_truth_area[good], 1)  # a nucleus filling the image has no FP room

    extra = np.ones(n_pred + 1, bool)  # id 0 is background; overlapping objects are not extra
    extra[0] = False
    extra[pred_id] = False
    missed = np.ones(n_truth + 1, bool)
    missed[0] = False
    missed[truth_id] = False

    empty_mean = 1.0 if both_empty else 0.0
    return {
        "object_precision": n_correct / n_pred if n_pred else 1.0,
        "object_recall": n_correct / n_truth if n_truth else 1.0,
        "object_f1": 2 * n_correct / (n_truth + n_pred) if n_truth + n_pred else 1.0,
        "object_dice": _mean_or(pair_dice[correct], empty_mean),
        "good_dice": _mean_or(pair_dice[good], empty_mean),
        "fnro": (n_truth - n_good) / n_truth if n_truth else 0.0,
        "tpp": _mean_or(intersection[good] / pair_truth_area[good], empty_mean),
        "fpp": _mean_or(false_positive_px / background_px, 0.0),
        "n_truth": n_truth,
        "n_pred": n_pred,
        "n_correct": n_correct,
        "n_good": n_good,
        "n_extra": int(np.count_nonzero(extra)),
        "n_missed": int(np.count_nonzero(missed)),
        "fp_extra": int(pred_area[extra].sum()),
        "fn_missed": int(truth_area[missed].sum()),
    }


def outline_dice(tp: float, fp: float, fn: float, fp_extra: float, fn_missed: float) -> float:
    """The Dice the outlines alone allow: as if the extra objects were dropped and the missed nuclei found exactly.
    Its distance from nucleus_dice is what detection errors cost, its distance from 1 what outline errors cost."""
    return dice_from_counts(tp + fn_missed, fp - fp_extra, fn - fn_missed)


def score_masks(truth, pred, connectivity: int = 8, ignore=None) -> dict[str, float | int]:
    """Pixel counts, nucleus Dice/IoU and object scores of one image, keyed as in ``SCORE_KEYS``. ``ignore``
    (boolean, or None): pixels that are neither nucleus nor background, left out of truth and prediction alike."""
    objects = object_scores(truth, pred, connectivity, ignore)
    if ignore is not None:
        keep = ~np.asarray(ignore, bool)
        truth, pred = np.asarray(truth, bool) & keep, np.asarray(pred, bool) & keep
    counts = pixel_counts(truth, pred)
    scores = {
        "nucleus_dice": dice_from_counts(counts["tp"], counts["fp"], counts["fn"]),
        "nucleus_iou": iou_from_counts(counts["tp"], counts["fp"], counts["fn"]),
        **objects,
        **counts,
    }
    scores["outline_dice"] = outline_dice(counts["tp"], counts["fp"], counts["fn"], scores["fp_extra"],
                                          scores["fn_missed"])
    return {key: scores[key] for key in SCORE_KEYS}


def _weighted_mean(values, weights, empty_value: float) -> float:
    total_weight = float(np.sum(weights))
    return float(np.dot(values, weights) / total_weight) if total_weight else empty_value


def pool_scores(per_image: Iterable[Mapping[str, float | int]]) -> dict[str, float | int]:
    """Dataset scores from ``score_masks`` results.

    ``nucleus_dice``/``nucleus_iou`` are pooled from the summed pixel counts (every pixel weighs the same);
    ``mean_nucleus_dice``/``mean_nucleus_iou`` are plain means over images (every image weighs the
    same, so a missed nucleus on a sparse tile counts fully). Object precision/recall/F1/fnro come from the summed
    object counts; object_dice, good_dice, tpp and fpp are means over all correct detections / good objects of all
    images (the ISBI evaluation averages over objects, not images), recovered as count-weighted means.
    """
    rows = list(per_image)
    if not rows:
        raise ValueError("pool_scores needs at least one image")

    def column(key: str) -> np.ndarray:
        return np.array([row[key] for row in rows], dtype=np.float64)

    summed = ("tp", "fp", "fn", "tn", "n_truth", "n_pred", "n_correct", "n_good", "n_extra", "n_missed", "fp_extra",
              "fn_missed")
    total = {key: int(column(key).sum()) for key in summed}
    n_truth, n_pred, n_correct, n_good = total["n_truth"], total["n_pred"], total["n_correct"], total["n_good"]
    empty_mean = 1.0 if n_truth == 0 and n_pred == 0 else 0.0
    pooled = {
        "nucleus_dice": dice_from_counts(total["tp"], total["fp"], total["fn"]),
        "nucleus_iou": iou_from_counts(total["tp"], total["fp"], total["fn"]),
        "object_precision": n_correct / n_pred if n_pred else 1.0,
        "object_recall": n_correct / n_truth if n_truth else 1.0,
        "object_f1": 2 * n_correct / (n_truth + n_pred) if n_truth + n_pred else 1.0,
        "object_dice": _weighted_mean(column("object_dice"), column("n_correct"), empty_mean),
        "good_dice": _weighted_mean(column("good_dice"), column("n_good"), empty_mean),
        "fnro": (n_truth - n_good) / n_truth if n_truth else 0.0,
        "tpp": _weighted_mean(column("tpp"), column("n_good"), empty_mean),
        "fpp": _weighted_mean(column("fpp"), column("n_good"), 0.0),
        "outline_dice": outline_dice(total["tp"], total["fp"], total["fn"], total["fp_extra"], total["fn_missed"]),
        **total,
    }
    result = {key: pooled[key] for key in SCORE_KEYS}
    result["mean_nucleus_dice"] = float(column("nucleus_dice").mean())
    result["mean_nucleus_iou"] = float(column("nucleus_iou").mean())
    result["mean_outline_dice"] = float(column("outline_dice").mean())
    result["n_images"] = len(rows)
    return result
