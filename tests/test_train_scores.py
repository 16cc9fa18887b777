"""train.scores and train.losses: hand-computed values for every score, the pooled metric's inflation, empty cases."""

from __future__ import annotations

import math
import subprocess
import sys

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from train.losses import (
    LOSSES,
    METRICS,
    custom_objects,
    dice_ce_loss,
    dice_coef_multiclass,
    dice_hard_ce_loss,
    nucleus_dice,
    nucleus_iou,
    tversky_ce_loss,
)
from train.scores import (
    SCORE_KEYS,
    dice_from_counts,
    iou_from_counts,
    label_objects,
    object_scores,
    overlap_pairs,
    pixel_counts,
    pool_scores,
    score_masks,
)

# truth       pred
# 1 1 0 0     0 1 1 0
# 1 1 0 0     0 1 1 0      tp = 2 (column 1), fp = 2 (column 2), fn = 2 (column 0), tn = 10
# 0 0 0 0     0 0 0 0      Dice = 2·2 / (2·2 + 2 + 2) = 0.5      IoU = 2 / (2 + 2 + 2) = 1/3
# 0 0 0 0     0 0 0 0
TRUTH_4 = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], bool)
PRED_4 = np.array([[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]], bool)


def one_hot(mask: np.ndarray) -> np.ndarray:
    """(N, H, W) bool nucleus masks -> (N, H, W, 2) float32 one-hot."""
    mask = mask.astype(np.float32)
    return np.stack([1.0 - mask, mask], axis=-1)


def soft(nucleus_probability: np.ndarray) -> np.ndarray:
    """(N, H, W) nucleus probability -> (N, H, W, 2) softmax-like prediction."""
    p = nucleus_probability.astype(np.float32)
    return np.stack([1.0 - p, p], axis=-1)


def value(tensor) -> float:
    return float(np.asarray(tensor))


def square(shape, rows, cols) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


def assert_no_nan(scores: dict) -> None:
    assert all(math.isfinite(v) for v in scores.values()), scores


# ----------------------------------------------------------------------------------------------------------- pixel


def test_pixel_counts_dice_iou_by_hand():
    assert pixel_counts(TRUTH_4, PRED_4) == {"tp": 2, "fp": 2, "fn": 2, "tn": 10}
    assert dice_from_counts(2, 2, 2) == pytest.approx(0.5)
    assert iou_from_counts(2, 2, 2) == pytest.approx(1 / 3)
    # 0/255 uint8 masks, as read from PNG, count the same
    assert pixel_counts(TRUTH_4.astype(np.uint8) * 255, PRED_4.astype(np.uint8) * 255)["tp"] == 2


def test_empty_counts_are_perfect_not_nan():
    assert dice_from_counts(0, 0, 0) == 1.0
    assert iou_from_counts(0, 0, 0) == 1.0
    assert dice_from_counts(0, 3, 0) == 0.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="one shape"):
        pixel_counts(np.zeros((4, 4)), np.zeros((4, 5)))


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 8).flatmap(
        lambda h: st.integers(1, 8).flatmap(lambda w: st.tuples(arrays(bool, (h, w)), arrays(bool, (h, w))))
    )
)
def test_pixel_dice_is_symmetric_and_bounded(pair):
    truth, pred = pair
    forward = pixel_counts(truth, pred)
    backward = pixel_counts(pred, truth)
    dice = dice_from_counts(forward["tp"], forward["fp"], forward["fn"])
    assert dice == dice_from_counts(backward["tp"], backward["fp"], backward["fn"])
    assert 0.0 <= dice <= 1.0
    assert iou_from_counts(forward["tp"], forward["fp"], forward["fn"]) <= dice


# ----------------------------------------------------------------------------------------------------------- keras


def test_dice_coef_multiclass_by_hand():
    # Image 1 (2×2): truth nucleus at (0,0); nucleus probabilities [[0.8, 0.1], [0.3, 0.0]].
    # Σ y_true·y_pred = probability of the true class = 0.8 + 0.9 + 0.7 + 1.0 = 3.4; Σ y_true + Σ y_pred = 4 + 4.
    # Dice = (2·3.4 + 1) / (8 + 1) = 7.8 / 9.  Image 2: all background, predicted exactly: (8 + 1) / (8 + 1) = 1.
    truth = np.zeros((2, 2, 2), bool)
    truth[0, 0, 0] = True
    probability = np.zeros((2, 2, 2), np.float32)
    probability[0] = [[0.8, 0.1], [0.3, 0.0]]
    y_true, y_pred = one_hot(truth), soft(probability)
    assert value(dice_coef_multiclass(y_true, y_pred)) == pytest.approx((7.8 / 9 + 1.0) / 2, abs=1e-6)
    assert value(dice_coef_multiclass(y_true[:1], y_pred[:1], smooth=0.0)) == pytest.approx(6.8 / 8, abs=1e-6)


def test_pooled_metric_is_inflated_but_nucleus_dice_is_not():
    # 50×50 tile, a 10×5 nucleus = 50 px = 2 %; the model predicts background everywhere.
    # dice_coef_multiclass = (2·2450 + 1) / (5000 + 1) ≈ 0.980 although not one nucleus pixel is found.
    truth = square((50, 50), (20, 30), (20, 25))[None]
    y_true = one_hot(truth)
    y_pred = one_hot(np.zeros_like(truth))
    assert value(dice_coef_multiclass(y_true, y_pred)) == pytest.approx(4901 / 5001, abs=1e-6)
    assert value(dice_coef_multiclass(y_true, y_pred)) > 0.98
    assert value(nucleus_dice(y_true, y_pred)) == 0.0
    assert value(nucleus_iou(y_true, y_pred)) == 0.0
    assert score_masks(truth[0], np.zeros((50, 50), bool))["nucleus_dice"] == 0.0


def test_nucleus_dice_and_iou_by_hand_pooled_over_the_batch():
    # Image 1: TRUTH_4 / PRED_4 (tp 2, fp 2, fn 2). Image 2: one truth pixel found exactly (tp 1).
    # Pooled: tp 3, fp 2, fn 2 -> Dice 6/10, IoU 3/7. Soft probabilities: 0.9 where predicted, 0.2 elsewhere.
    truth = np.stack([TRUTH_4, square((4, 4), (3, 4), (3, 4))])
    pred = np.stack([PRED_4, square((4, 4), (3, 4), (3, 4))])
    y_true, y_pred = one_hot(truth), soft(np.where(pred, 0.9, 0.2))
    assert value(nucleus_dice(y_true, y_pred)) == pytest.approx(0.6)
    assert value(nucleus_iou(y_true, y_pred)) == pytest.approx(3 / 7)


def test_nucleus_metrics_on_empty_batches():
    empty = one_hot(np.zeros((2, 4, 4), bool))
    assert value(nucleus_dice(empty, empty)) == 1.0
    assert value(nucleus_iou(empty, empty)) == 1.0
    one_pixel = one_hot(square((4, 4), (0, 1), (0, 1))[None])
    assert value(nucleus_dice(empty[:1], one_pixel)) == 0.0  # false alarm on an empty tile
    assert value(nucleus_iou(one_pixel, empty[:1])) == 0.0  # missed nucleus


def test_dice_ce_loss_by_hand():
    # 2×2 image, one nucleus pixel, prediction 0.5/0.5 everywhere.
    # CE = ln 2 per pixel; soft foreground Dice = (2·0.5 + 1) / (1 + 2 + 1) = 0.5 -> loss = ln 2 + 0.5 per pixel.
    y_true = one_hot(square((2, 2), (0, 1), (0, 1))[None])
    y_pred = soft(np.full((1, 2, 2), 0.5))
    np.testing.assert_allclose(np.asarray(dice_ce_loss(y_true, y_pred)), math.log(2) + 0.5, rtol=1e-5)
    assert dice_ce_loss.__name__ == "dice_ce"
    assert LOSSES["dice_ce"] is dice_ce_loss


def test_tversky_ce_loss_by_hand():
    # Same case: TP = 0.5, FP = 3·0.5, FN = 0.5 -> Tversky = (0.5 + 1) / (0.5 + 0.3·1.5 + 0.7·0.5 + 1) = 1.5 / 2.3.
    y_true = one_hot(square((2, 2), (0, 1), (0, 1))[None])
    y_pred = soft(np.full((1, 2, 2), 0.5))
    np.testing.assert_allclose(np.asarray(tversky_ce_loss(y_true, y_pred)), math.log(2) + 1 - 1.5 / 2.3, rtol=1e-5)
    assert tversky_ce_loss.__name__ == "tversky_ce"
    assert LOSSES["tversky_ce"] is tversky_ce_loss


def test_dice_hard_ce_averages_the_worst_tenth_of_the_pixels():
    rng = np.random.default_rng(4)
    truth = rng.random((2, 16, 16)) < 0.2
    probabilities = rng.random((2, 16, 16))
    y_true, y_pred = one_hot(truth), soft(probabilities)
    cross_entropy = -np.log(np.where(truth, probabilities, 1 - probabilities)).ravel()
    worst = np.sort(cross_entropy)[-51:]  # a tenth of 512 pixels, rounded down
    dice = (2 * np.sum(truth * probabilities) + 1) / (truth.sum() + probabilities.sum() + 1)
    np.testing.assert_allclose(float(dice_hard_ce_loss(y_true, y_pred)), worst.mean() + 1 - dice, rtol=1e-5)
    # Its Dice term is dice_ce's: the two differ only by hard minus plain mean cross-entropy.
    plain = float(np.mean(np.asarray(dice_ce_loss(y_true, y_pred))))
    np.testing.assert_allclose(float(dice_hard_ce_loss(y_true, y_pred)) - plain, worst.mean() - cross_entropy.mean(),
                               rtol=1e-5)
    # Getting the easy pixels right changes nothing; fixing a hard one does.
    easier = np.where(np.abs(probabilities - truth) < 0.3, truth * 0.98 + 0.01, probabilities)
    assert float(dice_hard_ce_loss(y_true, soft(easier))) == pytest.approx(
        worst.mean() + 1 - (2 * np.sum(truth * easier) + 1) / (truth.sum() + easier.sum() + 1), rel=1e-5)
    assert dice_hard_ce_loss.__name__ == "dice_hard_ce"
    assert LOSSES["dice_hard_ce"] is dice_hard_ce_loss


@pytest.mark.parametrize("name", ["categorical_crossentropy", "dice_ce", "tversky_ce", "dice_hard_ce",
                                  "nucleus_dice", "nucleus_iou", "dice_coef_multiclass"])
def test_ignored_pixels_count_for_no_loss_or_metric(name):
    """A pixel whose one-hot row is zero (rgb_map's class -1) changes nothing, whatever is predicted there."""
    import keras

    function = {**LOSSES, **METRICS}[name]
    function = keras.losses.get(function) if isinstance(function, str) else function
    rng = np.random.default_rng(4)
    nucleus = np.stack([square((16, 16), (4, 10), (4, 10))] * 2)
    truth = one_hot(nucleus)
    probability = np.clip(rng.uniform(0.0, 1.0, (2, 16, 16)), 0.01, 0.99)
    ring = np.stack([square((16, 16), (3, 11), (3, 11))] * 2) & ~nucleus
    truth[ring] = 0.0  # the line around each square: ignored
    scores = []
    for there in (0.01, 0.99):  # background-sure, then nucleus-sure on the ignored ring
        guess = probability.copy()
        guess[ring] = there
        scores.append(np.mean(np.asarray(function(truth, soft(guess)))))
    assert scores[0] == pytest.approx(scores[1], rel=1e-5, abs=1e-6), scores
    labelled = one_hot(nucleus)  # the same ring labelled as background: it counts
    guess = probability.copy()
    guess[ring] = 0.99
    assert np.mean(np.asarray(function(labelled, soft(guess)))) != pytest.approx(scores[1], rel=1e-3)


@pytest.mark.parametrize("loss", [dice_ce_loss, tversky_ce_loss])
def test_our_losses_average_their_cross_entropy_over_the_labelled_pixels(loss):
    """Half the pixels ignored: the cross-entropy term is that of the other half alone, not half of it."""
    truth = one_hot(np.zeros((1, 8, 8), bool))
    probability = np.full((1, 8, 8), 0.2)
    whole = np.mean(np.asarray(loss(truth[:, :4], soft(probability[:, :4]))))  # the labelled half alone
    truth[:, 4:] = 0.0
    halved = np.mean(np.asarray(loss(truth, soft(probability))))
    assert halved == pytest.approx(whole, rel=1e-5)


def test_score_masks_leaves_ignored_pixels_out_of_truth_and_prediction():
    truth = square((32, 32), (8, 20), (8, 20))
    pred = square((32, 32), (7, 21), (7, 21))  # one pixel wider all round
    ring = pred & ~truth
    assert score_masks(truth, pred)["fp"] == ring.sum()
    ignored = score_masks(truth, pred, ignore=ring)
    assert ignored["fp"] == 0 and ignored["nucleus_dice"] == 1.0
    assert ignored == score_masks(truth, pred & ~ring)
    # Two nuclei whose lines touch, predicted as one blob across the shared line: still one object, no detection.
    line = np.zeros((32, 32), bool)
    line[8:20, 15] = True
    left, right = square((32, 32), (8, 20), (6, 15)), square((32, 32), (8, 20), (16, 25))
    blob = left | right | line
    across = score_masks(left | right, blob, ignore=line)
    assert (across["n_pred"], across["n_correct"], across["object_f1"]) == (1, 0, 0.0)
    assert across["fp"] == 0 and across["nucleus_dice"] == 1.0  # pixel by pixel it is right
    assert score_masks(left | right, blob & ~line)["n_correct"] == 2  # masked first, it would split in two
    only_ignored = score_masks(left | right, left | right | square((32, 32), (0, 2), (0, 2)),
                               ignore=square((32, 32), (0, 2), (0, 2)))
    assert only_ignored["n_pred"] == 2 and only_ignored["n_extra"] == 0  # an object wholly ignored is gone


def test_every_loss_metric_and_activation_the_config_accepts_exists():
    import keras

    from train.config import ACTIVATION_NAMES, LOSS_NAMES, METRIC_NAMES
    from train.losses import METRICS

    assert tuple(LOSSES) == LOSS_NAMES and tuple(METRICS) == METRIC_NAMES
    for name in ACTIVATION_NAMES:  # the config checks names without Keras; each must be one Keras resolves
        assert callable(keras.activations.get(name)), name


def test_tversky_ce_is_dice_ce_with_equal_weights_and_charges_misses_more():
    rng = np.random.default_rng(3)
    truth = rng.random((2, 16, 16)) < 0.2
    y_true = one_hot(truth)
    y_pred = soft(rng.random((2, 16, 16)))
    # a = b = 0.5 with half the smoothing is exactly the soft Dice term of dice_ce
    np.testing.assert_allclose(np.asarray(tversky_ce_loss(y_true, y_pred, 0.5, 0.5, smooth=0.5)),
                               np.asarray(dice_ce_loss(y_true, y_pred)), rtol=1e-5)
    # One nucleus pixel missed costs more than one background pixel called nucleus (the CE parts are equal).
    empty = np.zeros((1, 4, 4), bool)
    one_nucleus = empty.copy()
    one_nucleus[0, 1, 1] = True
    certain = np.where(one_nucleus, 0.99, 0.01)
    missed = certain.copy()
    missed[0, 1, 1] = 0.01
    extra = certain.copy()
    extra[0, 2, 2] = 0.99
    loss_missed = float(np.mean(np.asarray(tversky_ce_loss(one_hot(one_nucleus), soft(missed)))))
    loss_extra = float(np.mean(np.asarray(tversky_ce_loss(one_hot(one_nucleus), soft(extra)))))
    assert loss_missed > loss_extra + 0.05


def test_keras_metrics_agree_with_numpy_scores():
    rng = np.random.default_rng(7)
    truth = np.zeros((3, 64, 64), np.uint8)
    for image in truth:
        for _ in range(4):
            cv2.circle(image, (int(rng.integers(0, 64)), int(rng.integers(0, 64))), int(rng.integers(3, 8)), 1, -1)
    truth = truth.astype(bool)
    # Noisy logits leaning towards the truth: some nuclei found, some missed, some false alarms.
    logits = rng.normal(0, 1.0, (3, 64, 64, 2)) + 1.2 * one_hot(truth)
    y_pred = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    predicted = y_pred.argmax(-1) == 1

    counts = [pixel_counts(t, p) for t, p in zip(truth, predicted, strict=True)]
    tp, fp, fn = (sum(c[key] for c in counts) for key in ("tp", "fp", "fn"))
    assert 0.2 < dice_from_counts(tp, fp, fn) < 0.95  # a non-trivial case
    assert value(nucleus_dice(one_hot(truth), y_pred)) == pytest.approx(dice_from_counts(tp, fp, fn), abs=1e-6)
    assert value(nucleus_iou(one_hot(truth), y_pred)) == pytest.approx(iou_from_counts(tp, fp, fn), abs=1e-6)
    assert pool_scores([score_masks(t, p) for t, p in zip(truth, predicted, strict=True)])[
        "nucleus_dice"
    ] == pytest.approx(dice_from_counts(tp, fp, fn))

    # The reference metric, written out in numpy: per image over pixels and classes, then the batch mean.
    y_true = one_hot(truth)
    per_image = (2 * (y_true * y_pred).sum((1, 2, 3)) + 1) / (y_true.sum((1, 2, 3)) + y_pred.sum((1, 2, 3)) + 1)
    assert value(dice_coef_multiclass(y_true, y_pred)) == pytest.approx(per_image.mean(), abs=1e-6)

    # float16 outputs (mixed precision) give finite, matching values
    half = y_pred.astype(np.float16)
    for metric in METRICS.values():
        assert value(metric(y_true, half)) == pytest.approx(value(metric(y_true, y_pred)), abs=2e-3)
    assert np.isfinite(np.asarray(dice_ce_loss(y_true, half))).all()


@pytest.mark.parametrize("loss", ["dice_ce", "tversky_ce"])
def test_compiled_model_logs_our_names_and_reloads(tmp_path, loss: str):
    import keras

    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Conv2D(2, 1, activation="softmax")(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss=LOSSES[loss], metrics=list(METRICS.values()))
    rng = np.random.default_rng(0)
    images = rng.random((4, 8, 8, 3)).astype(np.float32)
    masks = one_hot(rng.random((4, 8, 8)) > 0.8)
    history = model.fit(images, masks, batch_size=2, epochs=1, verbose=0)
    assert {"loss", "dice_coef_multiclass", "nucleus_dice", "nucleus_iou"} <= set(history.history)

    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.models.load_model(path, custom_objects=custom_objects())
    before = model.evaluate(images, masks, verbose=0, return_dict=True)
    after = reloaded.evaluate(images, masks, verbose=0, return_dict=True)
    assert after == pytest.approx(before, abs=1e-6)


# ----------------------------------------------------------------------------------------------------------- objects


def test_perfect_objects():
    truth = square((20, 20), (2, 6), (2, 6)) | square((20, 20), (10, 15), (10, 15))
    scores = score_masks(truth, truth)
    assert scores["n_truth"] == scores["n_pred"] == scores["n_correct"] == scores["n_good"] == 2
    for key in ("object_precision", "object_recall", "object_f1", "object_dice", "good_dice", "tpp", "nucleus_dice"):
        assert scores[key] == 1.0, key
    assert scores["fnro"] == 0.0 and scores["fpp"] == 0.0
    assert tuple(scores) == SCORE_KEYS


def test_two_touching_nuclei_predicted_as_one_blob_are_not_detections():
    # Truth: two 4×4 nuclei side by side, a 1-px gap between them (cols 1-4 and 6-9). Prediction: one 4×9 blob.
    # Each nucleus covers 16/36 = 0.44 of the blob (≤ 0.6): no correct detection, although pixel Dice is
    # 2·32 / (2·32 + 4) = 0.94. Cell protocol: Dice of each nucleus with the blob = 2·16 / (16 + 36) = 0.615 ≤ 0.7,
    # and the blob can be paired with one nucleus only -> both count in FNRo.
    shape = (6, 12)
    truth = square(shape, (1, 5), (1, 5)) | square(shape, (1, 5), (6, 10))
    blob = square(shape, (1, 5), (1, 10))
    scores = score_masks(truth, blob)
    assert (scores["n_truth"], scores["n_pred"], scores["n_correct"], scores["n_good"]) == (2, 1, 0, 0)
    assert scores["object_precision"] == scores["object_recall"] == scores["object_f1"] == 0.0
    assert scores["fnro"] == 1.0
    assert scores["good_dice"] == scores["tpp"] == scores["fpp"] == scores["object_dice"] == 0.0
    assert scores["nucleus_dice"] == pytest.approx(64 / 68)


def test_half_shifted_nucleus_counts_in_fnro():
    # 10×10 nucleus, predicted 5 px to the right: |A∩B| = 50, |A| = |B| = 100.
    # Overlap fractions 0.5 -> not a detection; Dice = 100/200 = 0.5 ≤ 0.7 -> FNRo = 1; pixel IoU = 50/150.
    truth = square((30, 30), (10, 20), (5, 15))
    shifted = square((30, 30), (10, 20), (10, 20))
    scores = score_masks(truth, shifted)
    assert scores["n_correct"] == 0 and scores["n_good"] == 0
    assert scores["fnro"] == 1.0
    assert scores["nucleus_dice"] == pytest.approx(0.5)
    assert scores["nucleus_iou"] == pytest.approx(1 / 3)


def test_slightly_shifted_nucleus_is_good_with_tpp_fpp_by_hand():
    # Shift by 1 px: |A∩B| = 90 -> fractions 0.9 (correct), Dice 0.9 (good), TPp = 90/100,
    # FPp = |A\B| / (H·W − |B|) = 10 / (900 − 100).
    truth = square((30, 30), (10, 20), (5, 15))
    shifted = square((30, 30), (10, 20), (6, 16))
    scores = object_scores(truth, shifted)
    assert scores["n_correct"] == 1 and scores["n_good"] == 1
    assert scores["object_dice"] == pytest.approx(0.9)
    assert scores["good_dice"] == pytest.approx(0.9)
    assert scores["tpp"] == pytest.approx(0.9)
    assert scores["fpp"] == pytest.approx(10 / 800)
    assert scores["fnro"] == 0.0


def test_split_prediction_is_matched_one_to_one():
    # Truth 10×10 (100 px); prediction split into 10×7 (cols 0-6) and 10×2 (cols 8-9), col 7 missed.
    # Big piece: 70/70 and 70/100 > 0.6 -> correct, Dice 140/170; small piece: 20/100 -> a false detection.
    # precision 1/2, recall 1/1, F1 = 2·1/(1 + 2) = 2/3. Cell protocol pairs the nucleus with the big piece only.
    truth = square((12, 12), (0, 10), (0, 10))
    pred = square((12, 12), (0, 10), (0, 7)) | square((12, 12), (0, 10), (8, 10))
    scores = object_scores(truth, pred)
    assert (scores["n_truth"], scores["n_pred"], scores["n_correct"], scores["n_good"]) == (1, 2, 1, 1)
    assert scores["object_precision"] == 0.5 and scores["object_recall"] == 1.0
    assert scores["object_f1"] == pytest.approx(2 / 3)
    assert scores["object_dice"] == pytest.approx(140 / 170)
    assert scores["good_dice"] == pytest.approx(140 / 170)
    assert scores["tpp"] == pytest.approx(0.7)
    assert scores["fpp"] == 0.0


def test_overlap_pairs_lists_every_overlapping_pair_with_its_pixels():
    truth = np.zeros((8, 12), bool)
    truth[1:4, 1:4] = True     # truth 1: 9 px
    truth[5:7, 6:11] = True    # truth 2: 10 px
    pred = np.zeros_like(truth)
    pred[2:4, 2:6] = True      # overlaps truth 1 by 4 px
    pred[5:7, 5:8] = True      # overlaps truth 2 by 4 px
    pred[5:7, 9:12] = True     # overlaps truth 2 by 4 px
    pred[0, 10] = True         # touches nothing
    truth_labels, n_truth = label_objects(truth, 8)
    pred_labels, n_pred = label_objects(pred, 8)
    assert (n_truth, n_pred) == (2, 4)
    truth_id, pred_id, pixels = overlap_pairs(truth_labels, pred_labels, n_pred)
    pairs = sorted(zip(truth_id.tolist(), pred_id.tolist(), pixels.tolist(), strict=True))
    found = {(int(truth_labels[t_y, t_x]), int(pred_labels[p_y, p_x]), 4)
             for (t_y, t_x), (p_y, p_x) in (((2, 2), (2, 2)), ((5, 6), (5, 6)), ((5, 9), (5, 9)))}
    assert pairs == sorted(found)


def test_connectivity_decides_whether_diagonal_pixels_are_one_object():
    diagonal = np.eye(3, dtype=bool)
    assert object_scores(diagonal, diagonal, connectivity=8)["n_truth"] == 1
    assert object_scores(diagonal, diagonal, connectivity=4)["n_truth"] == 3
    with pytest.raises(ValueError, match="4 or 8"):
        object_scores(diagonal, diagonal, connectivity=6)


def test_empty_truth_and_prediction_conventions():
    empty = np.zeros((16, 16), bool)
    nucleus = square((16, 16), (4, 8), (4, 8))

    both_empty = score_masks(empty, empty)
    assert_no_nan(both_empty)
    for key in ("nucleus_dice", "nucleus_iou", "object_precision", "object_recall", "object_f1", "object_dice"):
        assert both_empty[key] == 1.0, key
    assert both_empty["good_dice"] == both_empty["tpp"] == 1.0
    assert both_empty["fnro"] == both_empty["fpp"] == 0.0

    false_alarm = score_masks(empty, nucleus)  # nothing to find, something claimed
    assert_no_nan(false_alarm)
    assert false_alarm["object_precision"] == 0.0 and false_alarm["object_recall"] == 1.0
    assert false_alarm["object_f1"] == 0.0 and false_alarm["fnro"] == 0.0
    assert false_alarm["nucleus_dice"] == 0.0 and false_alarm["good_dice"] == 0.0

    missed = score_masks(nucleus, empty)  # something to find, nothing claimed
    assert_no_nan(missed)
    assert missed["object_precision"] == 1.0 and missed["object_recall"] == 0.0
    assert missed["object_f1"] == 0.0 and missed["fnro"] == 1.0
    assert missed["nucleus_dice"] == 0.0 and missed["tpp"] == 0.0

    pooled = pool_scores([both_empty, false_alarm, missed])
    assert_no_nan(pooled)


def test_error_breakdown_by_hand():
    # Truth: nucleus A (10×10, found 1 px shifted: 10 fp + 10 fn on its outline) and nucleus B (4×4, missed).
    # Prediction: A shifted, and an extra 3×3 object touching no nucleus.
    # tp 90, fp 10 + 9, fn 10 + 16 -> Dice 180/225 = 0.8. Extra: 1 object, 9 px; missed: 1 nucleus, 16 px.
    # Outlines alone: tp 90 + 16, fp 10, fn 10 -> 212/232.
    shape = (30, 30)
    truth = square(shape, (2, 12), (2, 12)) | square(shape, (20, 24), (20, 24))
    pred = square(shape, (2, 12), (3, 13)) | square(shape, (20, 23), (2, 5))
    scores = score_masks(truth, pred)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (90, 19, 26)
    assert scores["nucleus_dice"] == pytest.approx(180 / 225)
    assert (scores["n_extra"], scores["fp_extra"], scores["n_missed"], scores["fn_missed"]) == (1, 9, 1, 16)
    assert scores["outline_dice"] == pytest.approx(212 / 232)
    pooled = pool_scores([scores, score_masks(truth, truth)])
    assert (pooled["n_extra"], pooled["n_missed"], pooled["fp_extra"], pooled["fn_missed"]) == (1, 1, 9, 16)
    assert pooled["outline_dice"] == pytest.approx(2 * (90 + 16 + 116) / (2 * (90 + 16 + 116) + 10 + 10))
    assert pooled["mean_outline_dice"] == pytest.approx((212 / 232 + 1) / 2)


@settings(max_examples=60, deadline=None)
@given(arrays(bool, (12, 12)), arrays(bool, (12, 12)))
def test_error_breakdown_is_part_of_the_pixel_errors(truth, pred):
    scores = score_masks(truth, pred)
    assert 0 <= scores["fp_extra"] <= scores["fp"] and 0 <= scores["fn_missed"] <= scores["fn"]
    assert scores["n_extra"] <= scores["n_pred"] and scores["n_missed"] <= scores["n_truth"]
    assert scores["outline_dice"] >= scores["nucleus_dice"] - 1e-12  # dropping detection errors never hurts
    if scores["n_extra"] == scores["n_missed"] == 0:
        assert scores["outline_dice"] == scores["nucleus_dice"]


# ----------------------------------------------------------------------------------------------------------- pooling


def test_pooled_and_per_image_means_differ_as_expected():
    # Image 1: a 10×10 nucleus found exactly (Dice 1). Image 2: a 2×2 nucleus missed (Dice 0).
    # Pooled over pixels: tp 100, fn 4 -> Dice 200/204, IoU 100/104 (the big nucleus dominates);
    # mean over images: Dice 0.5, IoU 0.5. Objects: 2 truth, 1 predicted, 1 correct -> precision 1, recall 1/2,
    # F1 2/3, FNRo 1/2; good_dice averages the one good object only -> 1.
    found = square((20, 20), (5, 15), (5, 15))
    small = square((20, 20), (2, 4), (2, 4))
    pooled = pool_scores([score_masks(found, found), score_masks(small, np.zeros((20, 20), bool))])
    assert pooled["nucleus_dice"] == pytest.approx(200 / 204)
    assert pooled["nucleus_iou"] == pytest.approx(100 / 104)
    assert pooled["mean_nucleus_dice"] == pytest.approx(0.5)
    assert pooled["mean_nucleus_iou"] == pytest.approx(0.5)
    assert pooled["object_precision"] == 1.0 and pooled["object_recall"] == 0.5
    assert pooled["object_f1"] == pytest.approx(2 / 3)
    assert pooled["fnro"] == 0.5
    assert pooled["good_dice"] == 1.0 and pooled["object_dice"] == 1.0
    assert (pooled["tp"], pooled["fn"], pooled["n_truth"], pooled["n_images"]) == (100, 4, 2, 2)
    with pytest.raises(ValueError):
        pool_scores([])


def test_object_scores_on_a_full_size_image():
    # Speed is measured in bench/, not here; this checks the vectorised matching on a realistic field.
    rng = np.random.default_rng(3)
    truth = np.zeros((1024, 1024), np.uint8)
    pred = np.zeros((1024, 1024), np.uint8)
    for _ in range(60):
        centre = (int(rng.integers(20, 1004)), int(rng.integers(20, 1004)))
        radius = int(rng.integers(8, 16))
        cv2.circle(truth, centre, radius, 1, -1)
        cv2.circle(pred, (centre[0] + int(rng.integers(-3, 4)), centre[1]), radius, 1, -1)
    scores = score_masks(truth, pred)
    assert scores["n_truth"] > 40 and scores["n_correct"] > 30


def test_numpy_scoring_does_not_import_keras_or_prep():
    code = "import sys, train.scores; print(sorted({'keras', 'tensorflow', 'prep'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
