"""Keras training metrics and losses. y_true one-hot (N, H, W, C), y_pred softmax (N, H, W, C). Everything is cast to
float32 first so the functions work with mixed-precision outputs; they reduce within the (per-replica) batch, so
they also work under tf.distribute, where Keras averages the per-batch values. A pixel whose one-hot row is all
zero (a colour of ``[mask] rgb_map`` mapped to ``train.config.IGNORE_CLASS``) is neither nucleus nor background:
every loss and metric here skips it (its cross-entropy is 0, its prediction counts nowhere, and our losses average
their cross-entropy over the labelled pixels; Keras's own ``categorical_crossentropy`` averages over all of them).
The numpy scores are ``train.scores``."""

from __future__ import annotations

from keras import ops

from train.scores import NUCLEUS_CLASS


def dice_coef_multiclass(y_true, y_pred, smooth: float = 1.0):
    """The reference project's metric (antillia.com TensorFlow-FlexUNet, ``src/dice_coef_multiclass.py``).

    Per image, one soft Dice over all pixels *and all classes together*,
    (2·Σ y_true·y_pred + smooth) / (Σ y_true + Σ y_pred + smooth), then the mean over the batch; smooth = 1 as
    in the reference. It pools background with nucleus and is inflated: with one-hot truth and softmax
    predictions both sums equal H·W, so the score is the soft pixel accuracy — an all-background prediction on a
    tile with 2 % nucleus pixels scores ≈ 0.98. Kept for comparability only; lead with ``nucleus_dice``.
    """
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32") * _labelled(y_true)
    per_image_axes = tuple(range(1, len(y_pred.shape)))
    intersection = ops.sum(y_true * y_pred, axis=per_image_axes)
    total = ops.sum(y_true, axis=per_image_axes) + ops.sum(y_pred, axis=per_image_axes)
    return ops.mean((2.0 * intersection + smooth) / (total + smooth))


def _labelled(y_true):
    """1 where a pixel has a class, 0 where it is ignored (an all-zero one-hot row); (..., 1) to broadcast."""
    return ops.sum(y_true, axis=-1, keepdims=True)


def _hard_nucleus_counts(y_true, y_pred):
    """(tp, |truth|, |prediction|) of the argmax nucleus class over the labelled pixels, pooled over the batch."""
    y_true = ops.cast(y_true, "float32")
    truth = ops.cast(ops.equal(ops.argmax(y_true, axis=-1), NUCLEUS_CLASS), "float32")
    pred = ops.cast(ops.equal(ops.argmax(y_pred, axis=-1), NUCLEUS_CLASS), "float32") * _labelled(y_true)[..., 0]
    return ops.sum(truth * pred), ops.sum(truth), ops.sum(pred)


def nucleus_dice(y_true, y_pred):
    """Hard (argmax) Dice of the nucleus class pooled over the batch; 1.0 when truth and prediction are empty."""
    tp, truth, pred = _hard_nucleus_counts(y_true, y_pred)
    denominator = truth + pred
    return ops.where(denominator > 0, 2.0 * tp / ops.maximum(denominator, 1.0), 1.0)


def nucleus_iou(y_true, y_pred):
    """Hard (argmax) IoU of the nucleus class pooled over the batch; 1.0 when truth and prediction are empty."""
    tp, truth, pred = _hard_nucleus_counts(y_true, y_pred)
    union = truth + pred - tp
    return ops.where(union > 0, tp / ops.maximum(union, 1.0), 1.0)


def _cross_entropy_and_foreground(y_true, y_pred):
    """Per-pixel categorical cross-entropy and the foreground (class ≥ 1) channels of truth and prediction, in
    float32 (mixed precision hands the losses float16/bfloat16 predictions); ignored pixels have cross-entropy 0
    (their one-hot row is zero) and a zero foreground prediction, so the Dice terms do not see them either."""
    import keras
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    labelled = _labelled(y_true)
    # Keras averages the per-pixel loss over every pixel: scaled so that it is the mean over the labelled ones
    # (exactly 1 when none is ignored), whatever share of a batch an ignored line takes.
    share = ops.cast(ops.size(labelled), "float32") / ops.maximum(ops.sum(labelled), 1.0)
    cross_entropy = keras.losses.categorical_crossentropy(y_true, y_pred) * share
    return cross_entropy, y_true[..., NUCLEUS_CLASS:], y_pred[..., NUCLEUS_CLASS:] * labelled


def _soft_foreground_dice(true_fg, pred_fg, smooth: float):
    """Soft Dice of the foreground channels, pooled over the batch (the Dice term of dice_ce and dice_hard_ce)."""
    return (2.0 * ops.sum(true_fg * pred_fg) + smooth) / (ops.sum(true_fg) + ops.sum(pred_fg) + smooth)


def dice_ce_loss(y_true, y_pred, smooth: float = 1.0):
    """Categorical cross-entropy per pixel + (1 − soft Dice of the foreground classes ≥ 1, pooled over the batch).

    The Dice term ignores background, so it keeps pulling on the few nucleus pixels that cross-entropy averages
    away; smooth keeps it defined (and near 0 loss) on nucleus-free batches.
    """
    cross_entropy, true_fg, pred_fg = _cross_entropy_and_foreground(y_true, y_pred)
    return cross_entropy + (1.0 - _soft_foreground_dice(true_fg, pred_fg, smooth))


dice_ce_loss.__name__ = "dice_ce"  # the name Keras logs and serialises


def tversky_ce_loss(y_true, y_pred, false_positive_weight: float = 0.3, false_negative_weight: float = 0.7,
                    smooth: float = 1.0):
    """Categorical cross-entropy + (1 − Tversky index of the foreground classes, pooled over the batch).

    The Tversky index TP / (TP + a·FP + b·FN) is the soft Dice when a = b = 0.5; the default b > a charges a
    missed nucleus pixel more than a spurious one (recall over precision). Measured on the six real-EDF folds it
    gave fuller outlines but more extra objects and a lower mean nucleus Dice than dice_ce (README).
    """
    cross_entropy, true_fg, pred_fg = _cross_entropy_and_foreground(y_true, y_pred)
    true_positive = ops.sum(true_fg * pred_fg)
    false_positive = ops.sum((1.0 - true_fg) * pred_fg)
    false_negative = ops.sum(true_fg * (1.0 - pred_fg))
    tversky = (true_positive + smooth) / (true_positive + false_positive_weight * false_positive
                                          + false_negative_weight * false_negative + smooth)
    return cross_entropy + (1.0 - tversky)


tversky_ce_loss.__name__ = "tversky_ce"

HARD_PIXEL_SHARE = 0.1  # dice_hard_ce: the cross-entropy term averages the worst tenth of the batch's pixels


def dice_hard_ce_loss(y_true, y_pred, smooth: float = 1.0):
    """(1 − soft Dice of the foreground, as dice_ce) + cross-entropy averaged over the hardest HARD_PIXEL_SHARE of the
    batch's pixels (online hard-example mining, "bootstrapped" cross-entropy).

    Most pixels of a smear are plain background the model gets right within a few epochs; averaging over all of them
    lets the few that decide a nucleus Dice (dark specks that are no nucleus, pale nuclei, outlines) weigh little.
    """
    cross_entropy, true_fg, pred_fg = _cross_entropy_and_foreground(y_true, y_pred)
    pixels = ops.reshape(cross_entropy, [-1])
    if pixels.shape[0] is not None:  # a static k where the shape is known (JAX needs one)
        k = max(1, int(HARD_PIXEL_SHARE * pixels.shape[0]))
    else:
        k = ops.cast(ops.maximum(1.0, ops.floor(HARD_PIXEL_SHARE * ops.cast(ops.shape(pixels)[0], "float32"))), "int32")
    hardest, _ = ops.top_k(pixels, k)
    return ops.mean(hardest) + (1.0 - _soft_foreground_dice(true_fg, pred_fg, smooth))


dice_hard_ce_loss.__name__ = "dice_hard_ce"

METRICS = {
    "dice_coef_multiclass": dice_coef_multiclass,
    "nucleus_dice": nucleus_dice,
    "nucleus_iou": nucleus_iou,
}
LOSSES = {
    "categorical_crossentropy": "categorical_crossentropy",
    "dice_ce": dice_ce_loss,
    "tversky_ce": tversky_ce_loss,
    "dice_hard_ce": dice_hard_ce_loss,
}


def custom_objects() -> dict:
    """What ``keras.models.load_model`` needs to rebuild a model compiled with these metrics and losses."""
    custom_losses = {name: loss for name, loss in LOSSES.items() if callable(loss)}
    return {**METRICS, **custom_losses, "dice_ce_loss": dice_ce_loss}  # and under its function name
