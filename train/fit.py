"""Fit FlexUNet from a config: tf.data streaming, Keras' own callbacks, tf.distribute, mixed precision.

A killed run resumes at its last finished epoch (BackupAndRestore); the per-epoch log is appended across
resumes, and the curves, CSVs and ``history.json`` are written from it at the end.
"""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from train.config import Config, ConfigError

# The per-epoch log's mark of the epochs train.callbacks.WeightAverage averaged (records need no Keras).
AVERAGED_KEY = "averaged"
BEST_WEIGHTS = "best.weights.h5"
BEST_MODEL = "best.keras"
LOG_NAME = "train_log.csv"
BACKUP_DIR = "backup"
WEIGHT_AVERAGE_STATE = "weight_average.npz"  # in BACKUP_DIR: an interrupted run's running mean


class TrainError(RuntimeError):
    """A problem the user can fix (data, model files); the message names it."""


@dataclass
class RunPaths:
    model_dir: Path
    eval_dir: Path
    montage_dir: Path

    @property
    def best(self) -> Path:
        return self.model_dir / BEST_WEIGHTS

    @property
    def best_model(self) -> Path:
        return self.model_dir / BEST_MODEL

    @property
    def trained(self) -> Path:
        """The weights file a finished run left: best.weights.h5, else best.keras (which may not exist yet)."""
        return self.best if self.best.exists() else self.best_model

    @property
    def backup(self) -> Path:
        return self.model_dir / BACKUP_DIR

    @property
    def log(self) -> Path:
        return self.eval_dir / LOG_NAME


def run_paths(config: Config) -> RunPaths:
    return RunPaths(config.train.model_dir, config.train.eval_dir, config.train.epoch_change_infer_dir)


# ---------------------------------------------------------------------------------------------- set-up

def configure_devices(strategy: str, logical_cpus: int | None = None) -> None:
    """Split the CPU into logical devices so MirroredStrategy has replicas on a GPU-less machine.
    Must run before TensorFlow initialises its devices."""
    import tensorflow as tf

    if strategy != "mirrored" or tf.config.list_physical_devices("GPU"):
        return
    replicas = logical_cpus or 2
    cpu = tf.config.list_physical_devices("CPU")[0]
    # Already initialised (e.g. a second run in one process): keep the devices that exist.
    with contextlib.suppress(RuntimeError):
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)


def make_strategy(name: str):
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if tf.config.list_logical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ConfigError(f"[train] strategy = {name}: expected default, mirrored or multiworker")


def precision_policy(enabled: bool) -> str:
    """float16 on GPUs (tensor cores); bfloat16 on CPUs, where float16 kernels are emulated and slow."""
    import tensorflow as tf

    if not enabled:
        return "float32"
    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"


def build_model(config: Config, image_size: tuple[int | None, int | None] | None = None):
    """FlexUNet from the [model] section; ``image_size`` overrides the input size (crops, full tiles)."""
    from train.model import build_flexunet, check_architecture

    m = config.model
    try:
        check_architecture(m.image_height, m.image_width, m.num_layers, m.base_kernels, m.dilation, m.downsample)
    except ValueError as err:
        raise ConfigError(f"{config.path}: {err}") from None
    crop = config.train.crop_size
    multiple = m.downsample * 2 ** (m.num_layers - 1)
    if crop is not None and (crop[0] % multiple or crop[1] % multiple):
        raise ConfigError(f"{config.path}: [train] crop_size = {crop}: must be divisible by {multiple} "
                          f"([model] downsample × 2^(num_layers-1) = {m.downsample} × {2 ** (m.num_layers - 1)})")
    height, width = image_size or config.image_size
    # As the reference: more than one class means softmax over classes, whatever final_activation says.
    final = "softmax" if m.num_classes > 1 else m.final_activation
    return build_flexunet(height, width, m.image_channels, m.num_classes, base_filters=m.base_filters,
                          base_kernels=m.base_kernels, num_layers=m.num_layers, dropout_rate=m.dropout_rate,
                          dilation=m.dilation, normalization=m.normalization, activation=m.activation,
                          final_activation=final, downsample=m.downsample,
                          local_contrast=m.local_contrast)


def compile_model(model, config: Config) -> None:
    import keras

    from train.metrics import LOSSES, METRICS

    m = config.model
    options = {"learning_rate": m.learning_rate}
    if m.clipvalue is not None:
        options["clipvalue"] = m.clipvalue
    optimizer = (keras.optimizers.AdamW if m.optimizer == "AdamW" else keras.optimizers.Adam)(**options)
    unknown = [name for name in m.metrics if name not in METRICS]
    if unknown:
        raise ConfigError(f"{config.path}: [model] metrics: unknown {', '.join(unknown)} "
                          f"(known: {', '.join(METRICS)})")
    # The reference's metric first (comparability), then the ones that mean something with 1–3 % nuclei.
    names = list(dict.fromkeys([*m.metrics, "nucleus_dice", "nucleus_iou"]))
    model.compile(optimizer=optimizer, loss=LOSSES[m.loss], metrics=[METRICS[n] for n in names])


def _pairs(config: Config, section: str):
    from train.data import list_pairs

    part = getattr(config, section)
    return list_pairs(part.images_dir, part.masks_dir, config.mask.mask_file_format, section=section)


def tile_dataset_options(config: Config) -> dict:
    """How the config turns tiles into model inputs: the make_dataset arguments every split shares."""
    return {"rgb_map": config.mask.rgb_map, "num_classes": config.model.num_classes,
            "image_size": config.image_size, "image_channels": config.model.image_channels,
            "color_order": config.image.color_order}


def training_dataset_options(config: Config) -> dict:
    """The make_dataset arguments of the training split: shared ones, plus crops, sampling and augmentation."""
    t = config.train
    return {**tile_dataset_options(config), "batch_size": t.batch_size, "shuffle": True, "seed": t.seed,
            "crop_size": t.crop_size, "random_flips": t.random_flips, "foreground_bias": t.foreground_bias,
            "random_rotations": t.random_rotations, "intensity_jitter": t.intensity_jitter,
            "random_scale": t.random_scale, "random_blur": t.random_blur,
            "crops_per_tile": t.crops_per_tile, "repeat": t.steps_per_epoch is not None}


def datasets(config: Config, with_validation: bool = True):
    """(train dataset, valid dataset or None, train pairs, valid pairs)."""
    from train.data import check_masks, check_sizes, make_dataset

    t = config.train
    common = tile_dataset_options(config)
    train_images, train_masks = _pairs(config, "train")
    check_masks(train_masks, config.mask.rgb_map)
    check_sizes(train_images, train_masks, config.image_size, crop_size=t.crop_size)
    train_ds = make_dataset(train_images, train_masks, **training_dataset_options(config))
    valid_ds, valid_pairs = None, ([], [])
    if with_validation:
        valid_pairs = _pairs(config, "valid")
        check_masks(valid_pairs[1], config.mask.rgb_map)
        check_sizes(*valid_pairs, config.image_size)
        valid_ds = make_dataset(*valid_pairs, batch_size=t.batch_size, shuffle=False, seed=t.seed,
                                repeat=t.validation_steps is not None, **common)
    return train_ds, valid_ds, (train_images, train_masks), valid_pairs


# ---------------------------------------------------------------------------------------------- fit

def _prepare_output(paths: RunPaths, config: Config, overwrite: bool) -> bool:
    """Create the run folders; True when resuming an interrupted run. A finished model is never replaced
    without ``overwrite`` (or the reference's ``create_backup``, which moves it aside)."""
    resuming = paths.backup.is_dir() and any(paths.backup.iterdir())
    finished = paths.best.exists() or paths.best_model.exists()
    if finished and not resuming:
        if config.train.create_backup:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            paths.model_dir.rename(paths.model_dir.with_name(f"{paths.model_dir.name}.backup-{stamp}"))
        elif not overwrite:
            raise TrainError(f"{paths.model_dir} already holds a trained model (use --overwrite to replace it, "
                             f"or [train] create_backup = True to keep it aside)")
        else:
            shutil.rmtree(paths.model_dir)
    if not resuming and paths.log.exists():
        paths.log.unlink()  # a fresh run starts a fresh log; a resumed one appends
    for folder in (paths.model_dir, paths.eval_dir):
        folder.mkdir(parents=True, exist_ok=True)
    return resuming


def callbacks_for(config: Config, paths: RunPaths, valid_pairs, extra=(), train_ds=None):
    import keras

    from train.callbacks import CosineDecay, EpochMontage, TimeBudget, WeightAverage

    t = config.train
    best = paths.best if t.save_weights_only else paths.best_model
    total_steps = t.epochs * t.steps_per_epoch if t.steps_per_epoch else None
    for setting, wanted in (('lr_schedule = "cosine"', t.lr_schedule == "cosine"),
                            (f"average_weights = {t.average_weights}", t.average_weights > 0)):
        if wanted and total_steps is None and not t.max_train_seconds:
            raise ConfigError(f"{config.path}: [train] {setting} needs steps_per_epoch or max_train_seconds to know "
                              "how long the run is")
    if t.average_weights > 0 and t.save_best_only:
        raise ConfigError(f"{config.path}: [train] average_weights = {t.average_weights} keeps the average of the "
                          "run's end, not one best epoch: set save_best_only = False")
    averaging = []
    if t.average_weights > 0:
        # Before the CSV logger, which then records each epoch's "averaged" mark; its on_train_end write of the
        # average comes after every epoch-end checkpoint, so the average is what stays in `best`.
        averaging.append(WeightAverage(t.average_weights, total_steps, t.max_train_seconds,
                                       recalibration_data=train_ds, save_path=best,
                                       save_weights_only=t.save_weights_only,
                                       state_path=paths.backup / WEIGHT_AVERAGE_STATE))
    chosen = [
        keras.callbacks.BackupAndRestore(backup_dir=str(paths.backup), delete_checkpoint=True),
        keras.callbacks.ModelCheckpoint(str(best), monitor="val_loss", save_best_only=t.save_best_only,
                                        save_weights_only=t.save_weights_only),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=t.patience, restore_best_weights=False),
        *averaging,
        keras.callbacks.CSVLogger(str(paths.log), append=True),
        keras.callbacks.TensorBoard(log_dir=str(paths.model_dir / "logs")),
        keras.callbacks.TerminateOnNaN(),
    ]
    if t.lr_schedule == "cosine":
        # With averaging, the rate holds where the cosine is when averaging starts: SWA samples at a constant rate.
        chosen.append(CosineDecay(config.model.learning_rate, total_steps, t.max_train_seconds,
                                  hold_from=1.0 - t.average_weights))
    elif t.learning_rate_reducer:
        chosen.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=t.reducer_factor,
                                                        patience=t.reducer_patience, verbose=1))
    if t.epoch_change_infer and t.num_infer_images > 0 and valid_pairs[0]:
        chosen.append(EpochMontage(valid_pairs[0][: t.num_infer_images], valid_pairs[1][: t.num_infer_images],
                                   paths.montage_dir, config))
    if t.max_train_seconds:
        chosen.append(TimeBudget(t.max_train_seconds))
    return [*chosen, *extra]


def fit(config: Config, overwrite: bool = False, verbose: int | str = "auto", extra_callbacks=()) -> dict:
    """Train; returns a summary (epochs run, best val_loss, seconds, paths)."""
    import keras

    from train.callbacks import WeightAverage

    t = config.train
    configure_devices(t.strategy)
    keras.utils.set_random_seed(t.seed)
    keras.mixed_precision.set_global_policy(precision_policy(t.mixed_precision))
    try:
        from train.card import init_weights_of

        paths = run_paths(config)
        init_weights = init_weights_of(config)  # refused before anything is touched when it cannot fit
        train_ds, valid_ds, train_pairs, valid_pairs = datasets(config)
        resuming = _prepare_output(paths, config, overwrite)
        # Provenance beside the weights, --set overrides included: the settings these weights were trained with.
        (paths.model_dir / config.path.name).write_text(config.provenance_text(), encoding="utf-8")
        strategy = make_strategy(t.strategy)
        with strategy.scope():
            # Size-agnostic: it trains on crops and validates on whole tiles.
            model = build_model(config, (None, None))
            compile_model(model, config)
            if init_weights is not None:  # a resumed run's backup replaces these at the first epoch
                model.load_weights(str(init_weights))
        if config.model.show_summary:
            model.summary()
        callbacks = callbacks_for(config, paths, valid_pairs, extra_callbacks, train_ds)
        start = time.monotonic()
        model.fit(train_ds, validation_data=valid_ds, epochs=t.epochs, steps_per_epoch=t.steps_per_epoch, shuffle=False,
                  validation_steps=t.validation_steps, callbacks=callbacks,
                  verbose=verbose)
        seconds = time.monotonic() - start
    finally:
        keras.mixed_precision.set_global_policy("float32")
    history = write_history(paths)
    summary = {"resumed": resuming, "epochs": len(history["epoch"]), "seconds": seconds,
               "best_val_loss": min(history.get("val_loss", [float("nan")])), "model_dir": str(paths.model_dir),
               "eval_dir": str(paths.eval_dir), "strategy": t.strategy, "replicas": strategy.num_replicas_in_sync,
               "averaged_snapshots": sum(c.snapshots for c in callbacks if isinstance(c, WeightAverage))}
    weights = paths.trained
    if weights.exists():  # the folder describes itself: infer --model DIR needs nothing else
        from train.card import model_card, write_card

        card_summary = {**summary, "best_val_loss": summary["best_val_loss"]
                        if summary["best_val_loss"] == summary["best_val_loss"] else None}  # NaN is no JSON
        write_card(paths.model_dir, model_card(config, weights, card_summary, train_pairs, valid_pairs,
                                               model.count_params()))
    return summary


# ---------------------------------------------------------------------------------------------- records

def read_log(log: Path) -> dict[str, list[float]]:
    with log.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            columns.setdefault(key, []).append(int(value) + 1 if key == "epoch" else float(value))
    return columns


def _write_columns(path: Path, history: dict[str, list[float]], names: list[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["epoch", *names])
        for i, epoch in enumerate(history["epoch"]):
            writer.writerow([epoch, *(f"{history[n][i]:.6g}" for n in names)])


def averaged_epochs(history: dict[str, list[float]]) -> list[int]:
    """The epochs whose weights are averaged into the saved model; none when the run did not average.

    The log's mark counts the snapshots in the mean; a resumed run starts its mean again, so only the epochs
    from the last count of 1 on are in it."""
    marks = history.get(AVERAGED_KEY, [])
    starts = [i for i, count in enumerate(marks) if count == 1]
    if not starts or not all(marks[starts[-1]:]):
        return []  # never averaged, or a resumed run ended before its window: the last weights were kept
    return history["epoch"][starts[-1]:]


def _plot(path: Path, history: dict[str, list[float]], names: list[str], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    averaged = averaged_epochs(history)
    if averaged:
        # The curves are the run's own weights; the saved model is the mean over this span.
        axis.axvspan(averaged[0] - 0.5, averaged[-1] + 0.5, color="tab:green", alpha=0.12,
                     label=f"averaged into the saved weights ({len(averaged)} epochs)")
    for name in names:
        axis.plot(history["epoch"], history[name], marker="o", markersize=3, label=name,
                  linestyle="--" if name.startswith("val_") else "-")
    axis.set_xlabel("epoch")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(figure)


def write_history(paths: RunPaths) -> dict[str, list[float]]:
    """eval/train_metrics.csv, eval/train_losses.csv, their PNG plots and history.json, from the log."""
    if not paths.log.exists():
        raise TrainError(f"{paths.log}: no epoch finished, nothing to record")
    history = read_log(paths.log)
    losses = [n for n in history if n in ("loss", "val_loss")]
    metrics = [n for n in history if n not in ("epoch", "loss", "val_loss", "learning_rate", "lr", AVERAGED_KEY)]
    _write_columns(paths.eval_dir / "train_metrics.csv", history, metrics)
    _write_columns(paths.eval_dir / "train_losses.csv", history, losses)
    _plot(paths.eval_dir / "train_metrics.png", history, metrics, "metrics per epoch")
    _plot(paths.eval_dir / "train_losses.png", history, losses, "loss per epoch")
    (paths.eval_dir / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    return history
