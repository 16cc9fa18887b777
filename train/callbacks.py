"""The callbacks Keras does not have: the reference's epoch-change inference montage, a wall-clock budget, and
a cosine learning-rate decay that can follow that budget. Everything else (checkpoints, plateau LR reduction,
early stopping, logs, resume) is Keras' own."""

from __future__ import annotations

import math
import time
from pathlib import Path

import cv2
import keras
import numpy as np


def montage_row(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """image | ground truth | prediction, side by side, as uint8 RGB with thin white separators."""
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
    as_rgb = [rgb, *(np.repeat((m > 0).astype(np.uint8)[:, :, None] * 255, 3, axis=2) for m in (truth, prediction))]
    separator = np.full((rgb.shape[0], 4, 3), 255, np.uint8)
    return np.hstack([as_rgb[0], separator, as_rgb[1], separator, as_rgb[2]])


class EpochMontage(keras.callbacks.Callback):
    """After every epoch, predict a few validation tiles and save image | ground truth | prediction."""

    def __init__(self, image_paths, mask_paths, out_dir: Path, config):
        super().__init__()
        from train.data import make_dataset
        from train.fit import tile_dataset_options

        # The tiles exactly as the model sees them, read once through the training pipeline.
        pairs = make_dataset(image_paths, mask_paths, batch_size=len(image_paths), shuffle=False,
                             **tile_dataset_options(config))
        inputs, truths = (tensor.numpy() for tensor in next(iter(pairs)))
        self.inputs = inputs
        self.truths = np.argmax(truths, axis=-1)
        bgr = config.image.color_order.upper() == "BGR" and inputs.shape[-1] == 3
        self.display = np.rint((inputs[..., ::-1] if bgr else inputs) * 255).astype(np.uint8)
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def on_epoch_end(self, epoch, logs=None):
        predictions = np.argmax(self.model.predict(self.inputs, verbose=0, batch_size=2), axis=-1)
        rows = [montage_row(img, truth, pred)
                for img, truth, pred in zip(self.display, self.truths, predictions, strict=True)]
        sheet = np.vstack([np.vstack([row, np.full((4, row.shape[1], 3), 255, np.uint8)]) for row in rows])
        cv2.imwrite(str(self.out_dir / f"epoch_{epoch + 1:03d}.png"), sheet[:, :, ::-1])


class TimeBudget(keras.callbacks.Callback):
    """Stop training once ``seconds`` of wall-clock time have passed (checked after every batch)."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds
        self.start = 0.0

    def on_train_begin(self, logs=None):
        self.start = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        if time.monotonic() - self.start > self.seconds:
            self.model.stop_training = True


def cosine_factor(progress: float, floor: float = 0.01) -> float:
    """Learning-rate factor at ``progress`` ∈ [0, 1] of the run: 1 → ``floor`` along half a cosine."""
    progress = min(max(progress, 0.0), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class CosineDecay(keras.callbacks.Callback):
    """Set the learning rate to base·cosine_factor(progress) before every batch.

    Progress is the larger of (optimizer steps / ``total_steps``) and (elapsed / ``seconds``): a run with a
    wall-clock budget decays within the budget, whichever limit ends it first. Keras' LearningRateScheduler
    only acts per epoch, and a schedule object baked into the optimizer cannot see the clock.
    """

    def __init__(self, base_learning_rate: float, total_steps: int | None, seconds: float | None = None):
        super().__init__()
        if not total_steps and not seconds:
            raise ValueError("CosineDecay needs total_steps or seconds")
        self.base = base_learning_rate
        self.total_steps = total_steps
        self.seconds = seconds
        self.start = 0.0

    def on_train_begin(self, logs=None):
        self.start = time.monotonic()

    def progress(self) -> float:
        by_steps = int(self.model.optimizer.iterations.numpy()) / self.total_steps if self.total_steps else 0.0
        by_time = (time.monotonic() - self.start) / self.seconds if self.seconds else 0.0
        return max(by_steps, by_time)

    def on_train_batch_begin(self, batch, logs=None):
        self.model.optimizer.learning_rate.assign(self.base * cosine_factor(self.progress()))
