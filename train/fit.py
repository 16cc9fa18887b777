"""Fit FlexUNet from a config: tf.data streaming, Keras' own callbacks, tf.distribute, mixed precision.

A killed run resumes at its last finished epoch (BackupAndRestore); the per-epoch log is appended across
resumes, and the curves, CSVs and ``history.json`` are written from it at the end (``train.runs``).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings

from train.config import Config, ConfigError
from train.data import datasets, montage_tiles
from train.model import BFLOAT16_CPU_FLAGS, PRECISIONS, build_model, compile_model, resolve_precision
from train.runs import (
    RUN_RECORD,
    WEIGHT_AVERAGE_STATE,
    RunInterrupted,
    RunPaths,
    TrainError,
    check_writable,
    finish_output,
    has_backup,
    prepare_output,
    read_log,
    run_paths,
    write_history,
)

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


def multiworker_model(model):
    """The same network as a ``MultiWorkerLogs`` model (train.flexunet says why), to fit inside the strategy's scope.

    Keras 3's fit first reduces a whole data batch across workers to build the model symbolically, which
    MultiWorkerMirroredStrategy refuses; with no strategy of its own the model skips that build (its layers are
    built) and fit takes the scope's strategy."""
    from train.flexunet import MultiWorkerLogs

    wrapped = MultiWorkerLogs(model.inputs, model.outputs, name=model.name)
    wrapped._distribute_strategy = None
    return wrapped


def precision_policy(setting: bool | str, cpu_flags: str | None = None, gpu: bool | None = None) -> str:
    """The Keras dtype policy for [train] mixed_precision: float16 on GPUs (tensor cores); bfloat16 on CPUs, where
    float16 kernels are emulated and slow. "auto" takes bfloat16 only on a CPU that computes it natively
    (train.model.BFLOAT16_CPU_FLAGS in ``cpu_flags``, default /proc/cpuinfo): on one without, emulated bfloat16
    trains several times slower than float32 (7x seen on an AVX2-only EPYC). ``gpu``: default, whether one is
    visible."""
    if setting is False:
        return "float32"
    if gpu is None:
        import tensorflow as tf

        gpu = bool(tf.config.list_physical_devices("GPU"))
    if gpu:
        return "mixed_float16"
    if setting == "auto":
        return PRECISIONS[resolve_precision("auto", cpu_flags, gpu=False)]
    return "mixed_bfloat16"


def emulated_bfloat16_warning(policy: str, cpu_flags: str | None = None) -> str | None:
    """Why ``mixed_precision = True`` is a bad idea on this CPU, or None where it is not."""
    if policy != "mixed_bfloat16" or resolve_precision("auto", cpu_flags, gpu=False) == "bfloat16":
        return None
    return ("[train] mixed_precision = True: this CPU has no native bfloat16 (none of "
            f"{', '.join(BFLOAT16_CPU_FLAGS)}), so it is emulated and trains several times slower than float32; "
            "set it to auto (bfloat16 only where it is native) or False")


# ---------------------------------------------------------------------------------------------- fit

def check_backup(paths: RunPaths, config: Config, model, train_images) -> None:
    """An interrupted run's backup fits this run (same architecture and training tiles, weights readable), or a
    message says why not and how to start fresh; the backup itself is left as it is."""
    from train.card import ARCHITECTURE_KEYS, architecture
    from train.config import load_config

    how = (f"start again with `train fit --fresh` (discards {paths.backup}), or run with the config that "
           "started it")
    copy = paths.model_dir / config.path.name  # the provenance copy that interrupted run wrote first
    if copy.is_file():
        try:
            before = architecture(load_config(copy))
        except (ConfigError, OSError):
            before = None
        now = architecture(config)
        changed = [key for key in ARCHITECTURE_KEYS if before is not None and before[key] != now[key]]
        if changed:
            raise TrainError(f"{paths.backup}: the interrupted run in {paths.model_dir} had another architecture "
                             f"({', '.join(f'[model] {k} = {before[k]} then, {now[k]} now' for k in changed)}); "
                             f"cannot resume it: {how}")
    record = paths.backup / RUN_RECORD
    if record.is_file():
        from train.card import tile_list_sha256

        started = json.loads(record.read_text())
        now = tile_list_sha256(train_images)
        if started.get("train_tile_list_sha256") not in (None, now):
            raise TrainError(f"{paths.backup}: the training tiles changed since the interrupted run started "
                             f"({started.get('train_tiles')} tiles then, {len(train_images)} now, in "
                             f"{config.train.images_dir}); cannot resume it: {how}")
    weights = paths.backup / "latest.weights.h5"
    problems = []
    for candidate in (weights, weights.with_name(weights.name + ".bkp")):  # Keras keeps the one before too
        if not candidate.exists():
            continue
        try:
            if model.optimizer is not None and not model.optimizer.built:
                model.optimizer.build(model.trainable_variables)
            model.load_weights(str(candidate))
            return
        except Exception as err:  # h5py, shape or "objects could not be loaded": all mean it cannot resume
            problems.append(f"{candidate.name}: {str(err).strip().splitlines()[0][:200]}")
    raise TrainError(f"{paths.backup}: the interrupted run cannot be resumed "
                     f"({'; '.join(problems) or 'no weights saved there'}): {how}")


def callbacks_for(config: Config, paths: RunPaths, valid_pairs, extra=(), train_ds=None, resuming: bool = False):
    """The run's callbacks; ``resuming``: an interrupted run goes on, so its val_loss monitors start from its log."""
    import keras

    from train.callbacks import (
        CosineDecay,
        DivergenceGuard,
        EpochMontage,
        ResumedMonitors,
        TimeBudget,
        WeightAverage,
        replay_monitors,
    )

    t = config.train
    best = paths.best if t.save_weights_only else paths.best_model
    total_steps = t.epochs * t.steps_per_epoch if t.steps_per_epoch else None  # run-length rules: check_rules
    averaging = []
    if t.average_weights > 0:
        # Before the CSV logger, which then records each epoch's "averaged" mark; its on_train_end write of the
        # average comes after every epoch-end checkpoint, so the average is what stays in `best`.
        averaging.append(WeightAverage(t.average_weights, total_steps, t.max_train_seconds,
                                       recalibration_data=train_ds, save_path=best,
                                       save_weights_only=t.save_weights_only,
                                       state_path=paths.backup / WEIGHT_AVERAGE_STATE))
    checkpoint = keras.callbacks.ModelCheckpoint(str(best), monitor="val_loss", save_best_only=t.save_best_only,
                                                 save_weights_only=t.save_weights_only)
    early_stopping = keras.callbacks.EarlyStopping(monitor="val_loss", patience=t.patience,
                                                   restore_best_weights=False)
    chosen = [
        keras.callbacks.BackupAndRestore(backup_dir=str(paths.backup), delete_checkpoint=True),
        checkpoint,
        early_stopping,
        *averaging,
        keras.callbacks.CSVLogger(str(paths.log), append=True),
        keras.callbacks.TensorBoard(log_dir=str(paths.model_dir / "logs")),
        DivergenceGuard(),  # stops at a NaN/inf loss; fit then fails and keeps no weights of the run
    ]
    reducer = None
    if t.lr_schedule == "cosine":
        # With averaging, the rate holds where the cosine is when averaging starts: SWA samples at a constant rate.
        chosen.append(CosineDecay(config.model.learning_rate, total_steps, t.max_train_seconds,
                                  hold_from=1.0 - t.average_weights))
    elif t.learning_rate_reducer:
        reducer = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=t.reducer_factor,
                                                    patience=t.reducer_patience, verbose=1)
        chosen.append(reducer)
    if resuming and paths.log.is_file():
        val_losses = [v for v in read_log(paths.log).get("val_loss", []) if math.isfinite(v)]
        state = (replay_monitors(val_losses, t.reducer_patience, abs(reducer.min_delta), reducer.cooldown)
                 if reducer is not None else replay_monitors(val_losses))
        chosen.append(ResumedMonitors(state, checkpoint, early_stopping, reducer))
    if t.epoch_change_infer and t.num_infer_images > 0 and valid_pairs[0]:
        chosen.append(EpochMontage(*montage_tiles(config, valid_pairs[0][: t.num_infer_images],
                                                  valid_pairs[1][: t.num_infer_images]), paths.montage_dir))
    if t.max_train_seconds:
        chosen.append(TimeBudget(t.max_train_seconds))
    return [*chosen, *extra]


def fit(config: Config, overwrite: bool = False, verbose: int | str = "auto", extra_callbacks=(),
        fresh: bool = False) -> dict:
    """Train; returns a summary (epochs run, best val_loss, seconds, paths). Everything is checked (config, data,
    folders, a backup to resume) before anything is written; ``fresh`` discards an interrupted run's backup."""
    import keras

    from train.callbacks import DivergenceGuard, WeightAverage

    t = config.train
    configure_devices(t.strategy)
    # Before any TensorFlow op: MultiWorkerMirroredStrategy configures collective ops at program startup.
    strategy = make_strategy(t.strategy)
    keras.utils.set_random_seed(t.seed)
    policy = precision_policy(t.mixed_precision)
    warning = emulated_bfloat16_warning(policy)
    if warning:
        warnings.warn(warning, stacklevel=2)
    keras.mixed_precision.set_global_policy(policy)
    try:
        from train.card import init_weights_of

        paths = run_paths(config)
        init_weights = init_weights_of(config)  # refused before anything is touched when it cannot fit
        check_writable(paths, config)
        train_ds, valid_ds, train_pairs, valid_pairs = datasets(config)
        with strategy.scope():
            # Size-agnostic: it trains on crops and validates on whole tiles.
            model = build_model(config, (None, None))
            if t.strategy == "multiworker":
                model = multiworker_model(model)
            compile_model(model, config)
            if init_weights is not None:  # a resumed run's backup replaces these at the first epoch
                model.load_weights(str(init_weights))
            resumable = not fresh and has_backup(paths)
            if resumable:
                check_backup(paths, config, model, train_pairs[0])
        callbacks = callbacks_for(config, paths, valid_pairs, extra_callbacks, train_ds, resuming=resumable)
        try:
            resuming, previous = prepare_output(paths, config, overwrite, fresh)
        except OSError as err:
            raise TrainError(f"[train] model_dir = {paths.model_dir}: cannot prepare it ({err})") from None
        start = time.monotonic()
        try:
            # Provenance beside the weights, --set overrides included: the settings these weights were trained with.
            (paths.model_dir / config.path.name).write_text(config.provenance_text(), encoding="utf-8")
            if not resuming:  # what a resume is checked against
                from train.card import tile_list_sha256

                paths.backup.mkdir(parents=True, exist_ok=True)
                (paths.backup / RUN_RECORD).write_text(json.dumps(
                    {"train_tiles": len(train_pairs[0]), "train_tile_list_sha256": tile_list_sha256(train_pairs[0])}))
            if config.model.show_summary:
                model.summary()
            with strategy.scope() if t.strategy == "multiworker" else contextlib.nullcontext():
                model.fit(train_ds, validation_data=valid_ds, epochs=t.epochs, steps_per_epoch=t.steps_per_epoch,
                          shuffle=False, callbacks=callbacks, verbose=verbose)
        except BaseException as err:
            # A failure or a Ctrl-C leaves the model an --overwrite run was replacing as it was; a first run keeps
            # its backup/ so that running again resumes (a kill -9 cannot clean up: the next run resumes, or with
            # --fresh starts).
            if previous.model_dir is not None:
                finish_output(paths, previous, succeeded=False)
                if isinstance(err, KeyboardInterrupt):
                    raise RunInterrupted(f"interrupted: the model this --overwrite run was replacing is back in "
                                         f"{paths.model_dir}, as it was; the interrupted run is not kept") from None
            raise
        seconds = time.monotonic() - start
    finally:
        keras.mixed_precision.set_global_policy("float32")
    guard = next(c for c in callbacks if isinstance(c, DivergenceGuard))
    if guard.diverged:
        epoch, batch, loss = guard.diverged
        if previous.model_dir is None:
            with contextlib.suppress(TrainError, OSError):
                write_history(paths)  # the curves show where it went
        restored = finish_output(paths, previous, succeeded=False)
        m = config.model
        where = (f"the previous model in {paths.model_dir} and its curves are back as they were" if restored
                 else f"its curves are in {paths.eval_dir}")
        raise TrainError(f"training diverged at epoch {epoch}, batch {batch}: loss = {loss}; no weights of this run "
                         f"were kept ({where}). Lower [model] learning_rate (now {m.learning_rate:g}) or set "
                         f"[model] clipvalue (now {m.clipvalue})")
    history = write_history(paths)
    summary = {"resumed": resuming, "epochs": len(history["epoch"]), "seconds": seconds,
               "best_val_loss": min(history.get("val_loss", [float("nan")])), "model_dir": str(paths.model_dir),
               "eval_dir": str(paths.eval_dir), "strategy": t.strategy, "replicas": strategy.num_replicas_in_sync,
               "precision": policy,
               "averaged_snapshots": sum(c.snapshots for c in callbacks if isinstance(c, WeightAverage))}
    weights = paths.trained
    if weights.exists():  # the folder describes itself: infer --model DIR needs nothing else
        from train.card import model_card, write_card

        card_summary = {**summary, "best_val_loss": summary["best_val_loss"]
                        if summary["best_val_loss"] == summary["best_val_loss"] else None}  # NaN is no JSON
        write_card(paths.model_dir, model_card(config, weights, card_summary, train_pairs, valid_pairs,
                                               model.count_params()))
    finish_output(paths, previous, succeeded=True)
    return summary


