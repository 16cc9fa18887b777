"""The two callbacks Keras does not have: the reference's epoch-change inference montage, and a
wall-clock budget. Everything else (checkpoints, LR schedule, early stopping, logs, resume) is Keras' own."""

from __future__ import annotations

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
