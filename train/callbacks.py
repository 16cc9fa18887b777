"""The callbacks Keras does not have: the reference's epoch-change inference montage, a wall-clock budget, a
cosine learning-rate decay that can follow that budget, and stochastic weight averaging over the end of the run.
Everything else (checkpoints, plateau LR reduction, early stopping, logs, resume) is Keras' own."""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import keras
import numpy as np

from prep.imageio import IGNORE_LEVEL, NUCLEUS_LEVEL
from train.config import IGNORE_CLASS
from train.runs import AVERAGED_KEY


def class_picture(classes: np.ndarray) -> np.ndarray:
    """uint8 RGB of a class map: nucleus (any class > 0) white, background black, ignored pixels
    (IGNORE_CLASS: neither, e.g. auto-ignore-line's outlines) mid grey, as in the tile masks."""
    grey = np.where(classes > 0, NUCLEUS_LEVEL, np.where(classes == IGNORE_CLASS, IGNORE_LEVEL, 0)).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def montage_row(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """image | ground truth | prediction, side by side, as uint8 RGB with thin white separators."""
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
    as_rgb = [rgb, class_picture(truth), class_picture(prediction)]
    separator = np.full((rgb.shape[0], 4, 3), 255, np.uint8)
    return np.hstack([as_rgb[0], separator, as_rgb[1], separator, as_rgb[2]])


MONTAGE_COLUMNS = ("image", "truth", "prediction")


def montage_header(width: int, tile: int, epoch: int) -> np.ndarray:
    """A white band naming the columns and the epoch, so a montage read on its own says what it shows."""
    scale = max(0.3, min(1.0, tile / 256))
    height = int(round(22 * scale)) + 8
    band = np.full((height, width, 3), 255, np.uint8)
    for column, name in enumerate(MONTAGE_COLUMNS):
        label = f"{name}, epoch {epoch}" if column == 2 else name
        cv2.putText(band, label, (column * (tile + 4) + 3, height - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return band


def montage_sheet(display: np.ndarray, truths: np.ndarray, predictions: np.ndarray, epoch: int) -> np.ndarray:
    """The titled sheet of one epoch: a header, then one image | truth | prediction row per tile."""
    rows = [montage_row(img, truth, pred) for img, truth, pred in zip(display, truths, predictions, strict=True)]
    body = np.vstack([np.vstack([row, np.full((4, row.shape[1], 3), 255, np.uint8)]) for row in rows])
    return np.vstack([montage_header(body.shape[1], display.shape[2], epoch), body])


class EpochMontage(keras.callbacks.Callback):
    """After every epoch, predict a few validation tiles and save image | ground truth | prediction.

    ``inputs`` are the tiles as the model sees them, ``truths`` their class maps, ``display`` their RGB uint8
    pictures (``train.data.montage_tiles`` makes all three from the config)."""

    def __init__(self, inputs: np.ndarray, truths: np.ndarray, display: np.ndarray, out_dir: Path):
        super().__init__()
        self.inputs, self.truths, self.display = inputs, truths, display
        self.out_dir = Path(out_dir)

    def on_epoch_end(self, epoch, logs=None):
        predictions = np.argmax(self.model.predict(self.inputs, verbose=0, batch_size=2), axis=-1)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        sheet = montage_sheet(self.display, self.truths, predictions, epoch + 1)
        cv2.imwrite(str(self.out_dir / f"epoch_{epoch + 1:03d}.png"), sheet[:, :, ::-1])


class DivergenceGuard(keras.callbacks.Callback):
    """Stop at the first batch whose loss is NaN or infinite (as keras.callbacks.TerminateOnNaN) and say where,
    so ``fit`` can fail instead of keeping the weights such a run leaves."""

    def __init__(self):
        super().__init__()
        self.epoch = 0
        self.diverged: tuple[int, int, float] | None = None  # (epoch, batch, loss), 1-based

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and self.diverged is None and not math.isfinite(float(loss)):
            self.diverged = (self.epoch + 1, batch + 1, float(loss))
            self.model.stop_training = True


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


@dataclass(frozen=True)
class MonitorState:
    """What the val_loss monitors held after a run's finished epochs: the best value (ModelCheckpoint's and
    EarlyStopping's), its epoch (0-based), EarlyStopping's wait, and ReduceLROnPlateau's best, wait and cooldown."""

    best: float | None = None
    best_epoch: int = 0
    wait: int = 0
    reducer_best: float | None = None
    reducer_wait: int = 0
    reducer_cooldown: int = 0


def replay_monitors(val_losses, reducer_patience: int | None = None, reducer_min_delta: float = 1e-4,
                    reducer_cooldown: int = 0) -> MonitorState:
    """Keras' val_loss monitors run over ``val_losses`` (one per finished epoch, in order), as their own
    on_epoch_end rules move them (min mode; EarlyStopping's min_delta 0; a plateau cuts the rate, with min_lr 0
    it always can, and restarts its wait)."""
    best, best_epoch, wait = None, 0, 0
    reducer_best, reducer_wait, cooldown = None, 0, 0
    for epoch, value in enumerate(val_losses):
        wait += 1
        if best is None or value < best:
            best, best_epoch, wait = value, epoch, 0
        if reducer_patience is None:
            continue
        if cooldown > 0:
            cooldown, reducer_wait = cooldown - 1, 0
        if reducer_best is None or value + reducer_min_delta < reducer_best:
            reducer_best, reducer_wait = value, 0
        elif cooldown == 0:
            reducer_wait += 1
            if reducer_wait >= reducer_patience:
                cooldown, reducer_wait = reducer_cooldown, 0
    return MonitorState(best, best_epoch, wait, reducer_best, reducer_wait, cooldown)


class ResumedMonitors(keras.callbacks.Callback):
    """A resumed run's val_loss monitors start where the interrupted run left them, not afresh: otherwise its
    first epoch would replace the best weights whatever it scores, and early stopping and the plateau rule would
    wait from zero. Listed after the monitors, whose on_train_begin resets them first."""

    def __init__(self, state: MonitorState, checkpoint, early_stopping, reducer=None):
        super().__init__()
        self.state, self.checkpoint, self.early_stopping, self.reducer = state, checkpoint, early_stopping, reducer

    def on_train_begin(self, logs=None):
        if self.state.best is None:
            return
        self.checkpoint.best = self.state.best
        self.early_stopping.best, self.early_stopping.best_epoch = self.state.best, self.state.best_epoch
        self.early_stopping.wait = self.state.wait
        if self.reducer is not None:
            self.reducer.best, self.reducer.wait = self.state.reducer_best, self.state.reducer_wait
            self.reducer.cooldown_counter = self.state.reducer_cooldown


def cosine_factor(progress: float, floor: float = 0.01) -> float:
    """Learning-rate factor at ``progress`` ∈ [0, 1] of the run: 1 → ``floor`` along half a cosine."""
    progress = min(max(progress, 0.0), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def run_progress(steps: int, total_steps: int | None, elapsed: float, seconds: float | None) -> float:
    """How far the run is, 0 → 1: the larger of steps / ``total_steps`` and elapsed / ``seconds`` (either may be
    None), so a run with a wall-clock budget is measured by whichever limit will end it first."""
    by_steps = steps / total_steps if total_steps else 0.0
    by_time = elapsed / seconds if seconds else 0.0
    return max(by_steps, by_time)


class _RunClock(keras.callbacks.Callback):
    """A callback that knows how far the run is: ``run_progress`` of the optimizer's steps against
    ``total_steps`` and of the time since training began against ``seconds``."""

    def __init__(self, total_steps: int | None, seconds: float | None):
        super().__init__()
        if not total_steps and not seconds:
            raise ValueError(f"{type(self).__name__} needs total_steps or seconds")
        self.total_steps = total_steps
        self.seconds = seconds
        self.start = 0.0

    def on_train_begin(self, logs=None):
        self.start = time.monotonic()

    def progress(self) -> float:
        return run_progress(int(self.model.optimizer.iterations.numpy()), self.total_steps,
                            time.monotonic() - self.start, self.seconds)


class CosineDecay(_RunClock):
    """Set the learning rate to base·cosine_factor(progress) before every batch.

    Progress is ``run_progress``: a run with a wall-clock budget decays within the budget, whichever limit ends it
    first. From progress ``hold_from`` on the factor stays where it is then (the constant learning rate that
    stochastic weight averaging samples at). Keras' LearningRateScheduler only acts per epoch, and a schedule
    object baked into the optimizer cannot see the clock.
    """

    def __init__(self, base_learning_rate: float, total_steps: int | None, seconds: float | None = None,
                 hold_from: float = 1.0):
        super().__init__(total_steps, seconds)
        self.base = base_learning_rate
        self.hold_from = hold_from

    def on_train_batch_begin(self, batch, logs=None):
        factor = cosine_factor(min(self.progress(), self.hold_from))
        self.model.optimizer.learning_rate.assign(self.base * factor)


def batch_norm_layers(layer) -> list:
    """Every BatchNormalization layer in ``layer``, nested models included."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return [layer]
    return [found for inner in getattr(layer, "layers", []) for found in batch_norm_layers(inner)]


def recalibrate_batch_norm(model, batches) -> int:
    """Recompute every batch-norm layer's moving mean and variance from ``batches`` (images, or (images, masks)).

    Batch i is folded in with momentum 1 − 1/i, so the moving statistics end as the plain mean of the per-batch
    statistics, whatever they were before (SWA's bn_update). Returns how many batches were used; with none the
    statistics are untouched.
    """
    norms = batch_norm_layers(model)
    momenta = [layer.momentum for layer in norms]
    used = 0
    try:
        for batch in batches:
            images = batch[0] if isinstance(batch, tuple | list) else batch
            used += 1
            for layer in norms:
                layer.momentum = 1.0 - 1.0 / used
            model(images, training=True)
    finally:
        for layer, momentum in zip(norms, momenta, strict=True):
            layer.momentum = momentum
    return used


class WeightAverage(_RunClock):
    """Stochastic weight averaging (Izmailov et al., 2018) over the last ``share`` of the run.

    From progress 1 − share on (``run_progress``, as the cosine decay measures it) the weights are added to a
    running mean at every epoch end. When training ends the model takes the mean, its batch-norm statistics are
    recomputed on ``recalibration_batches`` batches of ``recalibration_data`` (the averaged weights produce
    activations no snapshot produced, so the snapshots' moving statistics do not fit them), and the result is
    written to ``save_path``, replacing the last epoch's checkpoint. Averaging the weights of a run that keeps
    moving finds a wider optimum than its last point, which is what generalises to unseen sources (Cha et al.,
    SWAD, 2021, on leave-one-domain-out benchmarks).

    With ``state_path`` (in the run's backup folder, which BackupAndRestore removes when the run finishes) the
    running mean is kept on disk at every epoch end in the window, so a killed step-budgeted run that resumes ends
    with the same average as one that was never stopped (see ``_restore_state`` for wall-clock runs).
    Each epoch's logs get ``averaged``: how many snapshots the mean holds after that epoch (0 before the window;
    1 again where a mean starts anew), so the per-epoch log and the curves show which epochs the saved weights
    are made of. It must come before the CSV logger in the callback list for that.
    """

    def __init__(self, share: float, total_steps: int | None, seconds: float | None, recalibration_data=None,
                 recalibration_batches: int = 32, save_path: Path | None = None, save_weights_only: bool = True,
                 state_path: Path | None = None):
        super().__init__(total_steps, seconds)
        if not 0 < share < 1:
            raise ValueError(f"WeightAverage share = {share}: expected a value in (0, 1)")
        self.share = share
        self.recalibration_data = recalibration_data
        self.recalibration_batches = recalibration_batches
        self.save_path = save_path
        self.save_weights_only = save_weights_only
        self.state_path = state_path
        self.mean: list[np.ndarray] | None = None
        self.snapshots = 0

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.mean, self.snapshots = None, 0
        self._restore_state()

    def _steps(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def _restore_state(self) -> None:
        """Take up the running mean of an interrupted run, when the resumed run is still inside its window.

        BackupAndRestore (earlier in the callback list) has restored the weights and the optimizer's step count
        by now. A step-budgeted run resumes where it was, so the mean goes on; a wall-clock run's clock starts
        again, so it is before its window and starts a new mean, as its learning rate starts again. A mean from
        beyond the restored step (the backup fell back to an older checkpoint) belongs to another path: dropped."""
        if self.state_path is None or not self.state_path.is_file() or self.progress() < 1.0 - self.share:
            return
        with np.load(self.state_path) as state:
            if int(state["steps"]) > self._steps():
                return
            self.snapshots = int(state["snapshots"])
            self.mean = [state[f"w{i}"] for i in range(len(state.files) - 2)]

    def _save_state(self) -> None:
        partial = self.state_path.with_name(self.state_path.name + ".partial")
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        with partial.open("wb") as handle:  # a file handle: np.savez would add its own suffix to a name
            np.savez(handle, steps=self._steps(), snapshots=self.snapshots,
                     **{f"w{i}": w for i, w in enumerate(self.mean)})
        partial.replace(self.state_path)

    def on_epoch_end(self, epoch, logs=None):
        if self.progress() >= 1.0 - self.share:
            weights = [np.asarray(w, np.float64) for w in self.model.get_weights()]
            self.snapshots += 1
            if self.mean is None:
                self.mean = weights
            else:
                for mean, w in zip(self.mean, weights, strict=True):
                    mean += (w - mean) / self.snapshots
            if self.state_path is not None:
                self._save_state()
        if logs is not None:
            logs[AVERAGED_KEY] = float(self.snapshots)  # 0 while there is no mean: the two are set together

    def on_train_end(self, logs=None):
        if self.mean is None:
            return  # the run ended before the averaging window: the last weights stand
        self.model.set_weights([m.astype(v.dtype) for m, v in zip(self.mean, self.model.weights, strict=True)])
        if self.recalibration_data is not None and self.recalibration_batches > 0:
            recalibrate_batch_norm(
                self.model, itertools.islice(iter(self.recalibration_data), self.recalibration_batches))
        if self.save_path is not None:
            if self.save_weights_only:
                self.model.save_weights(str(self.save_path))
            else:
                self.model.save(str(self.save_path))
