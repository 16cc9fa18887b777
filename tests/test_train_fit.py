"""train fit / evaluate / summary end to end on a tiny dataset made by `prep run` (CPU, seconds)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import REPO, SHARED
from train.cli import cli as train_cli
from train.config import ConfigError, load_config

TINY = """
[model]
image_width = 64
image_height = 64
image_channels = 3
num_classes = 2
base_filters = 4
base_kernels = (3,3)
num_layers = 3
dropout_rate = 0.02
learning_rate = 0.003
loss = "categorical_crossentropy"
metrics = ["dice_coef_multiclass"]
[train]
epochs = {epochs}
batch_size = 4
patience = 5
model_dir = "./models/"
eval_dir = "./eval/"
images_dir = "./data/train/images/"
masks_dir = "./data/train/masks/"
reducer_factor = 0.5
reducer_patience = 1
epoch_change_infer = True
epoch_change_infer_dir = "./epoch_change_infer"
num_infer_images = 2
save_weights_only = True
[valid]
images_dir = "./data/valid/images/"
masks_dir = "./data/valid/masks/"
[test]
images_dir = "./data/test/images/"
masks_dir = "./data/test/masks/"
[mask]
rgb_map = {{(0,0,0):0,(255,255,255):1,}}
"""


def make_run(tmp_path: Path, dataset: Path, epochs: int = 2, extra: str = "") -> Path:
    (tmp_path / "data").symlink_to(dataset, target_is_directory=True)
    config = tmp_path / "train_eval_infer.config"
    config.write_text(TINY.format(epochs=epochs) + extra)
    return config


def invoke(*args):
    return CliRunner().invoke(train_cli, [str(a) for a in args])


def read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def test_fit_evaluate_summary_write_every_artifact(tmp_path: Path, tiny_dataset: Path):
    config = make_run(tmp_path, tiny_dataset, epochs=3)
    result = invoke("fit", "--config", config, "--set", "train.epochs=2")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "models" / "best.weights.h5").is_file()
    # The copy beside the weights is the config this run used, its --set included.
    assert load_config(tmp_path / "models" / "train_eval_infer.config").train.epochs == 2
    assert any((tmp_path / "models" / "logs").rglob("*"))  # TensorBoard
    eval_dir = tmp_path / "eval"
    for name in ("train_metrics.csv", "train_losses.csv", "train_metrics.png", "train_losses.png", "history.json"):
        assert (eval_dir / name).is_file(), name
    losses = read_rows(eval_dir / "train_losses.csv")
    assert losses[0] == ["epoch", "loss", "val_loss"] and [r[0] for r in losses[1:]] == ["1", "2"]
    metrics_header = read_rows(eval_dir / "train_metrics.csv")[0]
    for name in ("dice_coef_multiclass", "val_dice_coef_multiclass", "nucleus_dice", "val_nucleus_dice",
                 "nucleus_iou", "val_nucleus_iou"):
        assert name in metrics_header
    history = json.loads((eval_dir / "history.json").read_text())
    assert history["epoch"] == [1, 2] and len(history["val_loss"]) == 2
    montages = sorted(p.name for p in (tmp_path / "epoch_change_infer").iterdir())
    assert montages == ["epoch_001.png", "epoch_002.png"]
    sheet = cv2.imread(str(tmp_path / "epoch_change_infer" / "epoch_001.png"))
    assert sheet.shape[1] == 3 * 64 + 8 and sheet.shape[0] >= 2 * 64  # image | truth | prediction, 2 tiles

    again = invoke("fit", "--config", config)
    assert again.exit_code != 0 and "--overwrite" in again.output

    evaluated = invoke("evaluate", "--config", config)
    assert evaluated.exit_code == 0, evaluated.output
    header, *rows = read_rows(tmp_path / "evaluation.csv")
    assert header == ["metric", "value"]
    assert [r[0] for r in rows[:2]] == ["categorical_crossentropy", "dice_coef_multiclass"]
    names = [r[0] for r in rows]
    for name in ("nucleus_dice", "nucleus_iou", "object_f1", "fnro"):
        assert name in names
    assert all(np.isfinite(float(r[1])) for r in rows)
    per_image = read_rows(tmp_path / "evaluation_per_image.csv")
    assert len(per_image) - 1 == len(list((tiny_dataset / "test" / "images").iterdir()))
    assert invoke("evaluate", "--config", config).exit_code != 0  # evaluation.csv is not clobbered
    assert invoke("evaluate", "--config", config, "--overwrite").exit_code == 0

    summary = invoke("summary", "--config", config)
    assert summary.exit_code == 0 and "total parameters:" in summary.output


@pytest.mark.parametrize("loss", ["tversky_ce", "dice_hard_ce"])
def test_custom_loss_trains_saves_a_whole_model_and_evaluates_under_its_name(tmp_path: Path, tiny_dataset: Path,
                                                                             loss: str):
    config = make_run(tmp_path, tiny_dataset, epochs=1)
    fitted = invoke("fit", "--config", config, "--set", f"model.loss={loss}",
                    "--set", "train.save_weights_only=False")
    assert fitted.exit_code == 0, fitted.output
    losses = read_rows(tmp_path / "eval" / "train_losses.csv")
    assert np.isfinite(float(losses[1][1]))
    # The whole saved model (not just weights) reloads and is scored with the configured loss, by name.
    evaluated = invoke("evaluate", "--config", config, "--set", f"model.loss={loss}",
                       "--set", "train.save_weights_only=False")
    assert evaluated.exit_code == 0, evaluated.output
    assert read_rows(tmp_path / "evaluation.csv")[1][0] == loss


def test_reduce_lr_on_plateau_gets_the_configured_values(tmp_path: Path, tiny_dataset: Path):
    import keras

    from train.config import load_config
    from train.fit import callbacks_for, run_paths

    config = load_config(make_run(tmp_path, tiny_dataset), ["train.reducer_patience=3", "train.reducer_factor=0.25"])
    chosen = callbacks_for(config, run_paths(config), ([], []))
    reducer = next(c for c in chosen if isinstance(c, keras.callbacks.ReduceLROnPlateau))
    assert (reducer.patience, reducer.factor) == (3, 0.25)
    stopper = next(c for c in chosen if isinstance(c, keras.callbacks.EarlyStopping))
    assert stopper.patience == config.train.patience
    assert not any(isinstance(c, keras.callbacks.ReduceLROnPlateau)
                   for c in callbacks_for(load_config(config.path, ["train.learning_rate_reducer=False"]),
                                          run_paths(config), ([], [])))


def test_validation_steps_score_the_same_tiles_every_epoch(tmp_path: Path, tiny_dataset: Path):
    from train.data import datasets

    config = load_config(make_run(tmp_path, tiny_dataset), ["train.validation_steps=1", "train.batch_size=1"])
    assert len(list((tiny_dataset / "valid" / "images").iterdir())) > 1  # a stream read on would move to another
    valid = datasets(config)[1]
    epochs = [[images.numpy() for images, _ in valid.take(5)] for _ in range(3)]  # afresh each epoch, as Keras does
    assert [len(batches) for batches in epochs] == [1, 1, 1]
    assert all(np.array_equal(epochs[0][0], batches[0]) for batches in epochs[1:])


def test_replayed_monitors_hold_what_keras_own_monitors_hold_after_the_same_epochs():
    import keras

    from train.callbacks import replay_monitors

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    rng = np.random.default_rng(4)
    for trial in range(30):
        losses = list(np.round(1.0 / (1 + np.arange(12)) + rng.normal(0, 0.08, 12), 4))  # ties and plateaus
        early = keras.callbacks.EarlyStopping(monitor="val_loss", patience=99)
        reducer = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", patience=2, cooldown=trial % 3, verbose=0)
        model.optimizer.learning_rate.assign(0.01)  # each trial cuts it afresh (a rate of 0 is cut no more)
        for callback in (early, reducer):
            callback.set_model(model)
            callback.on_train_begin()
            for epoch, value in enumerate(losses):
                callback.on_epoch_end(epoch, {"val_loss": value})
        state = replay_monitors(losses, 2, 1e-4, trial % 3)
        assert (state.best, state.best_epoch, state.wait) == (early.best, early.best_epoch, early.wait), trial
        assert (state.reducer_best, state.reducer_wait, state.reducer_cooldown) == (
            reducer.best, reducer.wait, reducer.cooldown_counter), trial


def test_a_resumed_run_keeps_its_best_weights_unless_an_epoch_beats_them(tmp_path: Path, tiny_dataset: Path):
    import keras

    from train.config import load_config
    from train.fit import callbacks_for, run_paths

    config = load_config(make_run(tmp_path, tiny_dataset), ["train.reducer_patience=3"])
    paths = run_paths(config)
    paths.log.parent.mkdir(parents=True, exist_ok=True)
    paths.log.write_text("epoch,loss,val_loss\n0,0.9,0.30\n1,0.8,0.20\n2,0.7,0.25\n3,0.6,0.26\n")
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    chosen = callbacks_for(config, paths, ([], []), resuming=True)
    monitors = [c for c in chosen if isinstance(c, (keras.callbacks.ModelCheckpoint, keras.callbacks.EarlyStopping,
                                                    keras.callbacks.ReduceLROnPlateau))]
    resumed = [c for c in chosen if type(c).__name__ == "ResumedMonitors"]
    assert len(monitors) == 3 and len(resumed) == 1 and chosen.index(resumed[0]) > max(map(chosen.index, monitors))
    for callback in [*monitors, *resumed]:  # in list order, as Keras calls them: the monitors reset, then seeded
        callback.set_model(model)
        callback.on_train_begin()
    checkpoint, stopper, reducer = monitors
    assert checkpoint.best == stopper.best == reducer.best == 0.20 and stopper.wait == 2 and reducer.wait == 2
    checkpoint._set_monitor_op()
    assert not checkpoint._is_improvement(0.28, checkpoint.best)  # the killed run's best stays in best.weights.h5
    fresh = callbacks_for(config, paths, ([], []))
    assert not any(type(c).__name__ == "ResumedMonitors" for c in fresh)


def test_cosine_schedule_decays_the_learning_rate_every_step_and_replaces_the_plateau_reducer(
        tmp_path: Path, tiny_dataset: Path):
    import keras

    from train.callbacks import cosine_factor
    from train.config import load_config
    from train.fit import callbacks_for, fit, run_paths

    assert cosine_factor(0.0) == 1.0 and cosine_factor(1.0) == pytest.approx(0.01)
    assert cosine_factor(0.5) == pytest.approx(0.505) and cosine_factor(7.0) == cosine_factor(1.0)
    config = load_config(make_run(tmp_path, tiny_dataset, epochs=2),
                         ["train.lr_schedule=cosine", "train.steps_per_epoch=3", "train.save_best_only=False"])
    assert not any(isinstance(c, keras.callbacks.ReduceLROnPlateau)
                   for c in callbacks_for(config, run_paths(config), ([], [])))

    seen: list[float] = []

    class Recorder(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(float(self.model.optimizer.learning_rate.numpy()))

    fit(config, verbose=0, extra_callbacks=[Recorder()])
    expected = [config.model.learning_rate * cosine_factor(step / 6) for step in range(6)]
    np.testing.assert_allclose(seen, expected, rtol=1e-5)
    with pytest.raises(ConfigError, match=r"lr_schedule = \"cosine\" needs steps_per_epoch or max_train_seconds"):
        load_config(config.path, ["train.lr_schedule=cosine"])  # refused when loaded, before anything runs


class Killed(Exception):
    pass


def kill_after(last_epoch: int):
    """A callback that ends the run with an exception after ``last_epoch``, as a killed job would end."""
    import keras

    class KillAfter(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == last_epoch:
                raise Killed

    return KillAfter()


# Step-budgeted weight averaging over the last half of a 4-epoch run: epochs 2, 3 and 4 are averaged.
AVERAGING = ["model.normalization=True", "train.lr_schedule=cosine", "train.steps_per_epoch=2",
             "train.save_best_only=False", "train.average_weights=0.5"]


def test_interrupted_run_resumes_at_the_next_epoch(tmp_path: Path, tiny_dataset: Path):
    import keras

    from train.config import load_config
    from train.fit import fit

    config = load_config(make_run(tmp_path, tiny_dataset, epochs=4))
    started: list[int] = []

    class Recorder(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            started.append(epoch + 1)

    with pytest.raises(Killed):
        fit(config, verbose=0, extra_callbacks=[Recorder(), kill_after(2)])
    assert started == [1, 2]
    summary = fit(config, verbose=0, extra_callbacks=[Recorder()])
    assert summary["resumed"] and started == [1, 2, 3, 4]
    history = json.loads((tmp_path / "eval" / "history.json").read_text())
    assert history["epoch"] == [1, 2, 3, 4]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}


def test_mirrored_strategy_on_two_logical_cpus_with_mixed_precision(tmp_path: Path, tiny_dataset: Path):
    config = make_run(tmp_path, tiny_dataset, epochs=1)
    result = subprocess.run([sys.executable, "-m", "train", "fit", "--config", str(config), "--set",
                             "train.strategy=mirrored", "--set", "train.mixed_precision=True"],
                            capture_output=True, text=True, env=_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on 2 replica(s) at mixed_bfloat16" in result.stdout  # True on a CPU: bfloat16, native or not
    assert (tmp_path / "models" / "best.weights.h5").is_file()


def test_precision_policy_takes_bfloat16_only_where_asked_or_native():
    from train.fit import emulated_bfloat16_warning, precision_policy

    native, avx2 = "flags : fpu avx2 avx512f avx512_bf16", "flags : fpu avx2 fma"
    assert [precision_policy(False, flags, gpu) for flags in (native, avx2) for gpu in (False, True)] == ["float32"] * 4
    assert precision_policy("auto", native, gpu=False) == "mixed_bfloat16"
    assert precision_policy("auto", avx2, gpu=False) == "float32"  # emulated bfloat16: several times slower
    assert precision_policy("auto", "flags : amx_bf16", gpu=False) == "mixed_bfloat16"
    assert precision_policy("auto", avx2, gpu=True) == precision_policy(True, avx2, gpu=True) == "mixed_float16"
    assert precision_policy(True, avx2, gpu=False) == "mixed_bfloat16"  # asked for: done, with a warning
    warning = emulated_bfloat16_warning("mixed_bfloat16", avx2)
    assert "[train] mixed_precision = True" in warning and "auto" in warning
    assert emulated_bfloat16_warning("mixed_bfloat16", native) is None
    assert emulated_bfloat16_warning("float32", avx2) is None


# Runs in a child process: the two logical CPUs must be made before TensorFlow starts its devices.
_MIRRORED_AVERAGING = """
import json, sys
import keras, numpy as np
from train.config import ConfigError, load_config
from train.fit import fit
from train.model import build_model
from train.runs import run_paths
from train.callbacks import batch_norm_layers

config = load_config(sys.argv[1], ["train.strategy=mirrored", *json.loads(sys.argv[2])])
snapshots = []

class Recorder(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        snapshots.append([np.array(w) for w in self.model.get_weights()])

summary = fit(config, verbose=0, extra_callbacks=[Recorder()])
saved = build_model(config, (None, None))
saved.load_weights(str(run_paths(config).best))
averaged = [np.mean(ws, axis=0) for ws in zip(*snapshots[1:])]
trainable = {id(v) for v in saved.trainable_weights}
norm_stats = {id(v) for layer in batch_norm_layers(saved) for v in (layer.moving_mean, layer.moving_variance)}
print(json.dumps({
    "replicas": summary["replicas"], "snapshots": summary["averaged_snapshots"],
    "trainable_is_mean": all(np.allclose(np.array(v), m, rtol=1e-5, atol=1e-6)
                             for v, m in zip(saved.weights, averaged) if id(v) in trainable),
    "stats_recalibrated": sum(not np.allclose(np.array(v), m, rtol=1e-3, atol=1e-5)
                              for v, m in zip(saved.weights, averaged) if id(v) in norm_stats),
    "norm_stats": len(norm_stats)}))
"""


def test_weight_average_and_batch_norm_recalibration_under_mirrored_strategy(tmp_path: Path, tiny_dataset: Path):
    config = make_run(tmp_path, tiny_dataset, epochs=4)
    result = subprocess.run([sys.executable, "-c", _MIRRORED_AVERAGING, str(config), json.dumps(AVERAGING)],
                            capture_output=True, text=True, env=_env(), timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2 and report["snapshots"] == 3
    assert report["trainable_is_mean"]
    # Averaging alone would leave the snapshots' mean statistics; the pass over training batches replaces them.
    assert report["norm_stats"] > 0 and report["stats_recalibrated"] == report["norm_stats"]


def test_reference_config_builds_the_reference_architecture():
    reference = SHARED / "data" / "reference-config" / "train_eval_infer.config"
    if not reference.is_file():
        pytest.skip("../shared/data/reference-config is not available")
    result = invoke("summary", "--config", reference)
    assert result.exit_code == 0, result.output
    assert "total parameters: 124,996,866" in result.output
    assert "does not exist" in result.output  # the reference's data folders: a warning, not an error


IGNORING = "mask.rgb_map={(0,0,0):0,(255,255,255):1,(128,128,128):-1}"


def test_ignored_pixels_train_and_are_scored_as_neither(tmp_path: Path, tiny_dataset: Path):
    """Masks with prep's ignore level (an outline's line in training; here all the test tiles' background, so no
    prediction there may count as a false positive) train, and evaluate leaves them out of every score."""
    config = make_run(tmp_path, tiny_dataset, epochs=1)
    data = _own_copy(tmp_path)
    for path in sorted((data / "train" / "masks").iterdir()):
        mask = cv2.imread(str(path))
        ring = (cv2.dilate(mask, np.ones((3, 3), np.uint8)) > 0) & (mask == 0)
        cv2.imwrite(str(path), np.where(ring, 128, mask).astype(np.uint8))
    fitted = invoke("fit", "--config", config, "--set", IGNORING, "--set", 'model.loss="dice_ce"')
    assert fitted.exit_code == 0, fitted.output
    history = json.loads((tmp_path / "eval" / "history.json").read_text())
    assert np.isfinite(history["loss"]).all()
    scored = {}
    for label, test_map in (("background", "mask.rgb_map={(0,0,0):0,(255,255,255):1,(128,128,128):0}"),
                            ("ignored", IGNORING)):
        if label == "ignored":
            for path in sorted((data / "test" / "masks").iterdir()):
                mask = cv2.imread(str(path))
                cv2.imwrite(str(path), np.where(mask == 0, 128, mask).astype(np.uint8))
        result = invoke("evaluate", "--config", config, "--set", test_map, "--set", 'model.loss="dice_ce"',
                        "--overwrite")
        assert result.exit_code == 0, result.output
        header, *rows = read_rows(tmp_path / "evaluation_per_image.csv")
        scored[label] = [dict(zip(header, row, strict=True)) for row in rows]
    for background, ignored in zip(scored["background"], scored["ignored"], strict=True):
        assert (ignored["tp"], ignored["fn"]) == (background["tp"], background["fn"]), ignored["file"]
        assert int(ignored["fp"]) == 0 and int(ignored["n_extra"]) == 0, ignored


def _own_copy(run: Path) -> Path:
    """Replace the shared dataset link by a private copy that a test may damage."""
    data = run / "data"
    target = run / "data_copy"
    shutil.copytree(data.resolve(), target)
    data.unlink()
    target.rename(data)
    return data


def _remove_a_mask(run: Path) -> None:
    next((_own_copy(run) / "train" / "masks").iterdir()).unlink()


def _grey_mask(run: Path) -> None:
    mask = sorted((_own_copy(run) / "train" / "masks").iterdir())[0]
    cv2.imwrite(str(mask), np.full((64, 64, 3), 128, np.uint8))


def _grey_last_mask(run: Path) -> None:
    """Beyond the pre-flight's first files: caught inside the tf.data graph while training."""
    mask = sorted((_own_copy(run) / "train" / "masks").iterdir())[-1]
    cv2.imwrite(str(mask), np.full((64, 64, 3), 128, np.uint8))


def _red_last_mask(run: Path) -> None:
    """A colour in a black/white map: read as grey, red is its luminance (0.299·255 ≈ 76), never 0 or 255."""
    mask = sorted((_own_copy(run) / "train" / "masks").iterdir())[-1]
    cv2.imwrite(str(mask), np.dstack([np.zeros((64, 64), np.uint8)] * 2 + [np.full((64, 64), 255, np.uint8)]))


BAD = {
    "missing data folder": ([], lambda run: (run / "data").unlink(), "[train] images_dir"),
    "image without mask": ([], _remove_a_mask, "[train] masks_dir"),
    "mask value outside rgb_map": ([], _grey_mask, "EDF002_0x0.png: value (128,128,128) is not in [mask] rgb_map"),
    "mask value found while streaming": ([], _grey_last_mask, "grey value 128 is not in [mask] rgb_map"),
    "colour found while streaming": ([], _red_last_mask, "grey value 76 is not in [mask] rgb_map"),
    "kernels not a pair": (["--set", 'model.base_kernels="nine"'], None, "[model] base_kernels"),
    "even kernels": (["--set", "model.base_kernels=(8,8)"], None, "odd"),
    "too deep": (["--set", "model.num_layers=9"], None, "[model] num_layers = 9 is too deep"),
    "crop the net cannot pool": (["--set", "train.crop_size=(36,36)", "--set", "model.downsample=2"], None,
                                 "[train] crop_size = (36, 36): must be divisible by 8"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_names_the_key_or_file(case: str, tmp_path: Path, tiny_dataset: Path):
    flags, damage, expected = BAD[case]
    config = make_run(tmp_path, tiny_dataset, epochs=1)
    if damage:
        damage(tmp_path)
    result = invoke("fit", "--config", config, *flags)
    assert result.exit_code != 0
    assert expected in result.output, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # a message, not a traceback


def test_evaluate_without_a_model_and_unreadable_config(tmp_path: Path, tiny_dataset: Path):
    config = make_run(tmp_path, tiny_dataset)
    result = invoke("evaluate", "--config", config)
    assert result.exit_code != 0 and "no trained model" in result.output
    garbage = tmp_path / "garbage.config"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    result = invoke("fit", "--config", garbage)
    assert result.exit_code != 0 and "garbage.config" in result.output


def test_weight_average_saves_the_mean_of_the_late_epochs_with_the_rate_held(tmp_path: Path, tiny_dataset: Path):
    import keras

    from train.callbacks import cosine_factor
    from train.config import load_config
    from train.fit import build_model, fit, run_paths

    config = load_config(make_run(tmp_path, tiny_dataset, epochs=4), AVERAGING)
    rates: list[float] = []
    trainable_at_epoch_end: list[list[np.ndarray]] = []

    class Recorder(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            rates.append(float(self.model.optimizer.learning_rate.numpy()))

        def on_epoch_end(self, epoch, logs=None):
            trainable_at_epoch_end.append([w.numpy().copy() for w in self.model.trainable_weights])

    summary = fit(config, verbose=0, extra_callbacks=[Recorder()])
    # Progress at the epoch ends is 2/8, 4/8, 6/8, 8/8: the last three epochs are averaged.
    assert summary["averaged_snapshots"] == 3
    base = config.model.learning_rate
    np.testing.assert_allclose(rates, [base * cosine_factor(min(step / 8, 0.5)) for step in range(8)], rtol=1e-5)

    # The log says which epochs the saved weights are made of; the curves shade them, and plot no "averaged" line.
    history = json.loads((run_paths(config).eval_dir / "history.json").read_text())
    assert history["averaged"] == [0, 1, 2, 3]
    assert "averaged" not in read_rows(run_paths(config).eval_dir / "train_metrics.csv")[0]

    saved = build_model(config, (None, None))
    saved.load_weights(str(run_paths(config).best))
    expected = [np.mean(snapshots, axis=0) for snapshots in zip(*trainable_at_epoch_end[1:], strict=True)]
    for got, want in zip(saved.trainable_weights, expected, strict=True):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(w, last) for w, last in zip(expected, trainable_at_epoch_end[-1], strict=True))


def test_a_killed_averaging_run_resumes_its_mean(tmp_path: Path, tiny_dataset: Path):
    import keras

    from train.config import load_config
    from train.fit import WEIGHT_AVERAGE_STATE, build_model, fit, run_paths

    config = load_config(make_run(tmp_path, tiny_dataset, epochs=4), AVERAGING)
    paths = run_paths(config)
    trainable_at_epoch_end: dict[int, list[np.ndarray]] = {}

    class Recorder(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            trainable_at_epoch_end[epoch + 1] = [w.numpy().copy() for w in self.model.trainable_weights]

    with pytest.raises(Killed):
        fit(config, verbose=0, extra_callbacks=[Recorder(), kill_after(3)])
    assert (paths.backup / WEIGHT_AVERAGE_STATE).is_file()  # epochs 2 and 3 are in the mean on disk
    summary = fit(config, verbose=0, extra_callbacks=[Recorder()])
    assert summary["resumed"] and sorted(trainable_at_epoch_end) == [1, 2, 3, 4]
    assert summary["averaged_snapshots"] == 3 and not paths.backup.exists()
    history = json.loads((paths.eval_dir / "history.json").read_text())
    assert history["averaged"] == [0, 1, 2, 3]

    saved = build_model(config, (None, None))
    saved.load_weights(str(paths.best))
    expected = [np.mean(s, axis=0) for s in zip(*(trainable_at_epoch_end[e] for e in (2, 3, 4)), strict=True)]
    for got, want in zip(saved.trainable_weights, expected, strict=True):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("marks", "expected"), [
    ([], []),                                   # no averaging: the log has no mark
    ([0, 0, 1, 2, 3], [3, 4, 5]),
    ([0, 1, 2, 0, 1, 2], [5, 6]),               # killed at epoch 3 and resumed: the mean started again
    ([0, 1, 2, 0, 0, 0], []),                   # resumed, and the resumed part never reached its window
])
def test_averaged_epochs_are_read_from_the_log_marks(marks, expected):
    from train.runs import averaged_epochs

    history = {"epoch": list(range(1, len(marks) + 1)), "averaged": marks} if marks else {"epoch": [1, 2, 3]}
    assert averaged_epochs(history) == expected


def test_batch_norm_recalibration_ends_at_the_mean_of_the_batch_statistics():
    import keras

    from train.callbacks import batch_norm_layers, recalibrate_batch_norm

    inner = keras.Sequential([keras.Input((4, 4, 2)), keras.layers.BatchNormalization(momentum=0.9)])
    model = keras.Sequential([keras.Input((4, 4, 2)), keras.layers.Conv2D(2, 1, use_bias=False), inner])
    model.layers[0].set_weights([np.eye(2, dtype=np.float32)[None, None]])  # identity: the norm sees the input
    norm = batch_norm_layers(model)[0]
    assert batch_norm_layers(model) == [norm] and norm is inner.layers[0]
    rng = np.random.default_rng(3)
    batches = [(rng.normal(loc, 1.0 + loc, (3, 4, 4, 2)).astype(np.float32), None) for loc in (0.0, 2.0, 5.0)]
    assert recalibrate_batch_norm(model, batches) == 3
    np.testing.assert_allclose(norm.moving_mean.numpy(),
                               np.mean([b.mean(axis=(0, 1, 2)) for b, _ in batches], axis=0), rtol=1e-5)
    np.testing.assert_allclose(norm.moving_variance.numpy(),
                               np.mean([b.var(axis=(0, 1, 2)) for b, _ in batches], axis=0), rtol=1e-4)
    assert norm.momentum == 0.9  # restored
    before = norm.moving_mean.numpy().copy()
    assert recalibrate_batch_norm(model, []) == 0
    np.testing.assert_array_equal(norm.moving_mean.numpy(), before)


@pytest.mark.parametrize(("flags", "expected"), [
    (["train.average_weights=0.3", "train.save_best_only=True", "train.steps_per_epoch=2"],
     "average_weights = 0.3 keeps the average of the run's end, not one best epoch: set save_best_only = False"),
    (["train.average_weights=0.3", "train.save_best_only=False"],
     "[train] average_weights = 0.3 needs steps_per_epoch or max_train_seconds"),
])
def test_weight_average_settings_that_cannot_work_are_refused(flags, expected, tmp_path: Path, tiny_dataset: Path):
    from train.config import ConfigError, load_config

    config_path = make_run(tmp_path, tiny_dataset)
    with pytest.raises(ConfigError) as caught:
        load_config(config_path, flags)  # when loaded, before anything is built or touched
    assert expected in str(caught.value) and str(config_path.resolve()) in str(caught.value)


def _trained_weights(run: Path, dataset: Path, seed: int) -> list[np.ndarray]:
    """Weights after a short step-budgeted run with every random training option on."""
    from train.config import load_config
    from train.fit import build_model, fit, run_paths

    run.mkdir()
    config = load_config(make_run(run, dataset, epochs=2),
                         ["model.normalization=True", "model.loss=dice_ce", "train.steps_per_epoch=3",
                          f"train.seed={seed}", "train.crop_size=(32,32)", "train.foreground_bias=0.5",
                          "train.crops_per_tile=2", "train.random_flips=True", "train.random_rotations=True",
                          "train.random_scale=0.3", "train.lr_schedule=cosine", "train.save_best_only=False",
                          "train.average_weights=0.5"])
    fit(config, verbose=0)
    model = build_model(config, (None, None))
    model.load_weights(str(run_paths(config).best))
    return [w.numpy() for w in model.weights]


def test_same_seed_and_step_budget_train_identical_weights(tmp_path: Path, tiny_dataset: Path):
    # Reproducibility holds for step budgets; a wall-clock budget (max_train_seconds) ends wherever the host is.
    first = _trained_weights(tmp_path / "first", tiny_dataset, seed=11)
    again = _trained_weights(tmp_path / "again", tiny_dataset, seed=11)
    other = _trained_weights(tmp_path / "other", tiny_dataset, seed=12)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_a_log_gets_one_line_per_epoch_and_no_carriage_return_bars(tmp_path: Path, tiny_dataset: Path):
    config = make_run(tmp_path, tiny_dataset, epochs=2)
    logged = invoke("fit", "--config", config)  # CliRunner's stdout is no terminal, as a log file or CI
    assert logged.exit_code == 0, logged.output
    assert "\r" not in logged.output and "\x1b[" not in logged.output
    assert [line.split()[0] for line in logged.output.splitlines() if line.startswith("Epoch ")] == ["Epoch", "Epoch"]
    asked = invoke("fit", "--config", config, "--overwrite", "--progress")
    assert asked.exit_code == 0 and "\r" in asked.output  # a bar when asked for, as on a terminal


def test_the_model_folder_describes_itself_and_infer_needs_only_it(tmp_path: Path, tiny_dataset: Path):
    from infer.cli import cli as infer_cli
    from train.card import CARD_NAME, file_sha256, read_card, tile_list_sha256
    from train.data import list_pairs

    config = make_run(tmp_path, tiny_dataset, epochs=1)
    assert invoke("fit", "--config", config).exit_code == 0
    models = tmp_path / "models"
    card = json.loads((models / CARD_NAME).read_text())
    assert card["config"] == config.name and (models / card["config"]).is_file()
    assert card["weights"] == "best.weights.h5" and card["weights_sha256"] == file_sha256(models / "best.weights.h5")
    assert card["architecture"]["num_layers"] == 3 and card["architecture"]["base_kernels"] == [3, 3]
    assert card["architecture"]["parameters"] > 0 and card["input"]["channels"] == 3
    assert card["classes"] == ["background", "nucleus"] and card["epochs"] == 1 and card["seed"] is not None
    assert card["train_precision"] == "float32"  # [train] mixed_precision = False, the default
    images, _ = list_pairs(tiny_dataset / "train" / "images", tiny_dataset / "train" / "masks")
    assert card["training_data"]["train_tiles"] == len(images)
    assert card["training_data"]["train_tile_list_sha256"] == tile_list_sha256(images)
    assert {"python", "tensorflow", "keras", "numpy"} <= set(card["versions"])
    inputs = tiny_dataset / "test" / "images"
    by_config = CliRunner().invoke(infer_cli, ["--config", str(config), "--input", str(inputs), "--output",
                                               str(tmp_path / "by-config"), "--no-progress"])
    assert by_config.exit_code == 0, by_config.output
    elsewhere = tmp_path / "moved" / "my-model"  # the folder alone, away from its config and data
    shutil.copytree(models, elsewhere, ignore=shutil.ignore_patterns("logs", "backup"))
    by_model = CliRunner().invoke(infer_cli, ["--model", str(elsewhere), "--input", str(inputs), "--output",
                                              str(tmp_path / "by-model"), "--no-progress"])
    assert by_model.exit_code == 0, by_model.output
    for mask in sorted((tmp_path / "by-config").glob("*.png")):
        assert (tmp_path / "by-model" / mask.name).read_bytes() == mask.read_bytes(), mask.name
    record = json.loads((tmp_path / "by-model" / "infer.json").read_text())
    assert record["model"]["folder"] == str(elsewhere.resolve()) and record["model"]["given_as"] == "--model"
    assert record["model"]["weights_sha256"] == card["weights_sha256"] and record["options"]["overlap"] == 0.25
    (elsewhere / CARD_NAME).unlink()
    missing = CliRunner().invoke(infer_cli, ["--model", str(elsewhere), "--input", str(inputs), "--output",
                                             str(tmp_path / "none"), "--no-progress"])
    assert missing.exit_code == 1 and "model.json" in missing.output and "Traceback" not in missing.output
    neither = CliRunner().invoke(infer_cli, ["--input", str(inputs), "--output", str(tmp_path / "none")])
    assert neither.exit_code == 1 and "--config" in neither.output and "--model" in neither.output
    with pytest.raises(ConfigError, match="model.json"):
        read_card(elsewhere)


def test_init_weights_fine_tunes_from_a_model_folder_and_refuses_another_architecture(tmp_path: Path,
                                                                                       tiny_dataset: Path):
    import keras

    base = tmp_path / "base"
    base.mkdir()
    config = make_run(base, tiny_dataset, epochs=1)
    assert invoke("fit", "--config", config).exit_code == 0
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    tuned_config = make_run(tuned, tiny_dataset, epochs=1, extra=f'\n[train]\ninit_weights = "{base / "models"}"\n')
    start = {}

    class FirstWeights(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            start["weights"] = [w.copy() for w in self.model.get_weights()]

    from train.fit import fit

    fit(load_config(tuned_config), extra_callbacks=[FirstWeights()])
    from train.model import build_model

    reference = build_model(load_config(config), (None, None))
    reference.load_weights(str(base / "models" / "best.weights.h5"))
    for got, expected in zip(start["weights"], reference.get_weights(), strict=True):
        np.testing.assert_array_equal(got, expected)  # the run started from the base model's weights
    other = tmp_path / "other"
    other.mkdir()
    other_config = make_run(other, tiny_dataset, epochs=1,
                            extra=f'\n[train]\ninit_weights = "{base / "models"}"\n[model]\nbase_filters = 8\n')
    result = invoke("fit", "--config", other_config)
    assert result.exit_code == 1 and "another architecture" in result.output and "base_filters 4 ≠ 8" in result.output
    assert not (other / "models").exists()  # refused before anything was written
