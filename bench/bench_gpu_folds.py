"""The whole-field folds trained on any Keras backend: issue 29's GPU run (JAX there; that machine has no TensorFlow).

    KERAS_BACKEND=jax python bench/bench_gpu_folds.py --fields ../shared/data/isbi2014/EDF \\
        --model "configs/bench_cpu.config steps=5000" \\
        --model "configs/edf_cervical.config seconds=60 train.batch_size=8" [--folds 5] [--only 0,1] [--out FILE]

`make bench-folds` trains through `train fit`, whose input pipeline is tf.data; this script trains the same
FlexUNet of each ``--model`` config on the same folds (bench_folds' plan: fold k holds out every 5th field from the
k-th) with an input of numpy and OpenCV alone, so it runs wherever Keras does. Each ``--model`` is a config path,
then ``steps=N`` or ``seconds=S`` (the training budget), optionally ``folds=0,1`` (that model on those folds only),
then any ``section.key=value`` overrides. `bench/device_folds.sh` is the prepared run for a lent GPU machine.

What it keeps of `train fit`'s recipe: the config's crop size, batch size, steps per epoch, foreground bias, flips,
quarter turns, random zoom and learning rate; the cosine decay held over the SWA window and the weight average with
its batch-norm recalibration (`train.callbacks`, the same callbacks); bench-real's pale copies of every training
field (`prep.augment.fade_nuclei`, `bench_real.DEFAULT_PREP_FLAGS`' factors). What differs: crops are cut from the
whole 1024² fields rather than from prep's 512² tiles, there is no validation split (bench-real's only drew curves;
a config whose schedule is the plateau reducer, as the reference's, so trains at its constant learning rate), and
the compute precision is --precision's for every model. The held-out fields are predicted whole with infer's
recommended preset (2 views, min area 30, holes filled, edge objects and unsure ones dropped) and scored with
train.scores, as bench-folds scores them.

Per model and fold it reports the training seconds and steps, the images per second (crops through the network in
training), the first step's seconds (compilation), the infer seconds per field, and each held-out field's nucleus
Dice, object F1, FNRo, extra and missed nuclei; per model the means over folds. One JSON line per finished fold goes
to --out as it finishes (a run stopped at its limit keeps them); the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from make_folds import field_fold_plan  # noqa: E402

from prep.edf import InputError, discover_png_pairs  # noqa: E402

DEFAULT_FIELDS = REPO.parent / "shared" / "data" / "isbi2014" / "EDF"
PALE_FACTORS = (0.3, 0.45, 0.6)  # bench_real.DEFAULT_PREP_FLAGS' --fade-factors (a test keeps the two equal)
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


@dataclass(frozen=True)
class ModelSpec:
    """One ``--model``: a config, its training budget (steps or seconds) and its overrides."""

    config: Path
    steps: int | None = None
    seconds: float | None = None
    overrides: tuple[str, ...] = field(default_factory=tuple)
    folds: tuple[int, ...] | None = None  # only these folds (None: every fold --only leaves)

    @property
    def name(self) -> str:
        budget = f"steps={self.steps}" if self.steps else f"seconds={self.seconds:g}"
        return " ".join([self.config.stem, budget, *self.overrides])


def parse_model_spec(text: str) -> ModelSpec:
    """'configs/x.config steps=5000 [folds=0,1] train.batch_size=8' → ModelSpec; a bad spec is a ValueError naming
    it."""
    try:
        words = shlex.split(text)
    except ValueError as err:
        raise ValueError(f"--model {text!r}: {err}") from None
    if not words:
        raise ValueError("--model '': expected a config path, then steps=N or seconds=S")
    config, steps, seconds, folds, overrides = Path(words[0]), None, None, None, []
    if not config.is_file():
        raise ValueError(f"--model {text!r}: {config} is not a file")
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if not sep or not value:
            raise ValueError(f"--model {text!r}: {word!r} is not key=value")
        try:
            if key == "steps":
                steps = int(value)
            elif key == "seconds":
                seconds = float(value)
            elif key == "folds":
                folds = tuple(sorted({int(k) for k in value.split(",")}))
            elif "." in key:
                overrides.append(word)
            else:
                raise ValueError(f"unknown key {key!r} (steps, seconds, folds or section.key)")
        except ValueError as err:
            raise ValueError(f"--model {text!r}: {word!r}: {err}") from None
    if (steps is None) == (seconds is None):
        raise ValueError(f"--model {text!r}: give one budget, steps=N or seconds=S")
    if (steps is not None and steps < 1) or (seconds is not None and not (math.isfinite(seconds) and seconds > 0)):
        raise ValueError(f"--model {text!r}: the budget must be positive")
    return ModelSpec(config, steps, seconds, tuple(overrides), folds)


def sample_crop(image: np.ndarray, nucleus: np.ndarray, rng: np.random.Generator, size: tuple[int, int],
                foreground_bias: float = 0.0, random_scale: float = 0.0, flips: bool = False,
                quarter_turns: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One training crop of ``size`` from a field: centred on a nucleus pixel with probability ``foreground_bias``
    (anywhere otherwise), zoomed by a factor in [1/(1 + random_scale), 1 + random_scale] (log-uniform: the source
    window is size / zoom), then flipped and turned a quarter at random. ``image`` is H×W or H×W×C uint8,
    ``nucleus`` a bool H×W; returns the crop and its nucleus mask (bool). The field is reflected where the window
    overhangs it."""
    height, width = nucleus.shape
    zoom = math.exp(rng.uniform(-1.0, 1.0) * math.log1p(random_scale)) if random_scale > 0 else 1.0
    window = (max(1, round(size[0] / zoom)), max(1, round(size[1] / zoom)))
    if foreground_bias > 0 and rng.random() < foreground_bias and nucleus.any():
        ys, xs = np.nonzero(nucleus)
        pick = rng.integers(len(ys))
        centre = (int(ys[pick]), int(xs[pick]))
    else:
        centre = (int(rng.integers(height)), int(rng.integers(width)))
    top = min(max(centre[0] - window[0] // 2, 0), max(height - window[0], 0))
    left = min(max(centre[1] - window[1] // 2, 0), max(width - window[1], 0))
    rows = _reflect(np.arange(top, top + window[0]), height)
    cols = _reflect(np.arange(left, left + window[1]), width)
    crop, mask = image[np.ix_(rows, cols)], nucleus[np.ix_(rows, cols)]
    if window != tuple(size):
        crop = cv2.resize(crop, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(mask.astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST) > 0
    if flips and rng.random() < 0.5:
        crop, mask = crop[:, ::-1], mask[:, ::-1]
    if quarter_turns and size[0] == size[1]:
        turns = int(rng.integers(4))
        crop, mask = np.rot90(crop, turns), np.rot90(mask, turns)
    return np.ascontiguousarray(crop), np.ascontiguousarray(mask)


def _reflect(indices: np.ndarray, length: int) -> np.ndarray:
    """Indices folded back into [0, length) as a mirror (OpenCV's REFLECT_101)."""
    if length == 1:
        return np.zeros_like(indices)
    period = 2 * (length - 1)
    folded = np.mod(indices, period)
    return np.where(folded < length, folded, period - folded)


def read_fields(refs: dict) -> dict[str, tuple[tuple[np.ndarray, ...], np.ndarray]]:
    """Each field read once for the whole run: its RGB image and pale copies, and its nucleus mask. A field trains in
    all folds but its own, for every model, and the copies' inpainting is the costly part."""
    from prep.augment import fade_nuclei
    from prep.imageio import read_image
    from prep.truth import read_truth

    fields = {}
    for name, ref in refs.items():
        rgb = read_image(ref.image_path)
        nucleus = read_truth(ref.mask_path).mask
        images = (rgb, *(fade_nuclei(rgb, nucleus, factor) for factor in PALE_FACTORS))
        for array in (*images, nucleus):  # shared by every fold and model: nothing may write into them
            array.setflags(write=False)
        fields[name] = (images, nucleus)
    return fields


def training_fields(names: list[str], fields: dict, config) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each training field and its pale copies as the model sees them (its channels, uint8), with the nucleus mask."""
    from infer.run import model_input

    return [(model_input(image, config), fields[name][1]) for name in names for image in fields[name][0]]


def batch_maker(fields, config, seed: int):
    """A function (epoch, index) → one training batch (images in 0..1, one-hot masks): the same batch for the same
    seed, epoch and index, whichever worker makes it."""
    t, m = config.train, config.model
    size = tuple(t.crop_size or config.image_size)
    eye = np.eye(m.num_classes, dtype=np.float32)
    from train.scores import NUCLEUS_CLASS

    def make(epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([seed, epoch, index])
        images, masks = [], []
        for _ in range(t.batch_size):
            image, nucleus = fields[int(rng.integers(len(fields)))]
            crop, mask = sample_crop(image, nucleus, rng, size, t.foreground_bias, t.random_scale, t.random_flips,
                                     t.random_rotations)
            images.append(crop.reshape(*size, -1).astype(np.float32) / 255.0)
            masks.append(eye[np.where(mask, NUCLEUS_CLASS, 0)])
        return np.stack(images), np.stack(masks)

    return make


class FoldTrainer:
    """One spec's FlexUNet, built and compiled once: each fold starts from the same initial weights and optimizer
    state, so the backend's compiled training and prediction steps are reused (on JAX a recompile of the reference
    model costs about a minute of a 15-minute device budget)."""

    def __init__(self, spec: ModelSpec, config, precision: str):
        import keras

        from train.model import build_model, compile_model

        self.spec, self.config = spec, config
        keras.utils.set_random_seed(config.train.seed)
        keras.mixed_precision.set_global_policy(precision)
        self.model = build_model(config, (None, None))
        compile_model(self.model, config)
        self.model.optimizer.build(self.model.trainable_variables)
        self.initial_weights = self.model.get_weights()
        self.initial_optimizer = [variable.numpy() for variable in self.model.optimizer.variables]

    def reset(self) -> None:
        self.model.set_weights(self.initial_weights)
        for variable, value in zip(self.model.optimizer.variables, self.initial_optimizer, strict=True):
            variable.assign(value)

    def train(self, fields, log=print) -> dict:
        """Train on ``fields`` from the initial weights within the spec's budget; returns the training figures."""
        import keras

        from train.callbacks import CosineDecay, TimeBudget, WeightAverage

        self.reset()
        spec, config, model = self.spec, self.config, self.model
        t = config.train
        keras.utils.set_random_seed(t.seed)
        make = batch_maker(fields, config, t.seed)
        steps_per_epoch = t.steps_per_epoch or 50

        class Crops(keras.utils.PyDataset):
            def __init__(self):
                super().__init__(workers=4, use_multiprocessing=False)
                self.epoch = 0

            def __len__(self):
                return steps_per_epoch

            def __getitem__(self, index):
                return make(self.epoch, index)

            def on_epoch_end(self):
                self.epoch += 1

        class FirstStep(keras.callbacks.Callback):
            """Seconds to the end of the first step: the backend compiles the training step there."""

            def on_train_begin(self, logs=None):
                self.start, self.seconds = time.monotonic(), 0.0

            def on_train_batch_end(self, batch, logs=None):
                if not self.seconds:
                    self.seconds = time.monotonic() - self.start

        seconds, total_steps = spec.seconds, spec.steps
        epochs = math.ceil(total_steps / steps_per_epoch) if total_steps else 10**6
        if total_steps:
            total_steps = epochs * steps_per_epoch  # whole epochs, as train fit runs them
        callbacks = []
        if t.average_weights > 0:
            recalibration = (make(10**9, i) for i in range(32))  # batches no epoch draws
            callbacks.append(WeightAverage(t.average_weights, total_steps, seconds,
                                           recalibration_data=recalibration))
        if t.lr_schedule == "cosine":
            callbacks.append(CosineDecay(config.model.learning_rate, total_steps, seconds,
                                         hold_from=1.0 - t.average_weights))
        if seconds:
            callbacks.append(TimeBudget(seconds))
        first = FirstStep()
        start = time.monotonic()
        history = model.fit(Crops(), epochs=epochs, callbacks=[first, *callbacks], verbose=0)
        train_seconds = time.monotonic() - start
        steps = int(model.optimizer.iterations.numpy())
        losses = history.history.get("loss", [])
        timed = max(train_seconds - first.seconds, 1e-9)
        figures = {"train_seconds": round(train_seconds, 1), "steps": steps, "epochs": len(losses),
                   "first_step_seconds": round(first.seconds, 1),
                   "train_images_per_s": round((steps - 1) * t.batch_size / timed, 1),
                   "loss_first": round(float(losses[0]), 4) if losses else None,
                   "loss_last": round(float(losses[-1]), 4) if losses else None}
        log(f"  trained {steps} steps ({figures['epochs']} epochs) in {train_seconds:.0f} s "
            f"(first step {first.seconds:.0f} s), {figures['train_images_per_s']:.0f} crops/s")
        return figures


def score_fields(model, config, names: list[str], fields: dict, refs: dict) -> dict:
    """Each held-out field predicted whole with infer's recommended preset and scored as bench-folds scores it."""
    from infer.cli import options_from
    from infer.run import make_predictor, predict_image
    from train.scores import pool_scores

    options = options_from(config, overlap=0.25, tta=None, tta_mode=None, batch_size=4, mode=None, threshold=0.5,
                           min_area=None, fill_holes=None, exclude_border=None, split_touching=False,
                           precision="float32", write_labels=False, write_geojson=False)
    predict_batch = make_predictor(model)
    per_field, scores = {}, []
    for name in names:
        (rgb, *_pale), truth = fields[name]
        result = predict_image(refs[name].image_path, rgb, truth, config, predict_batch, options)
        scores.append(result.scores)
        s = result.scores
        per_field[name] = {"nucleus_dice": round(s["nucleus_dice"], 4), "f1": round(s["object_f1"], 4),
                           "fnro": round(s["fnro"], 4), "n_extra": int(s["n_extra"]),
                           "n_missed": int(s["n_missed"]), "infer_seconds": round(result.row["seconds"], 2)}
    pooled = pool_scores(scores)
    return {"nucleus_dice": round(pooled["mean_nucleus_dice"], 4), "f1": round(pooled["object_f1"], 4),
            "fnro": round(pooled["fnro"], 4), "n_extra": int(pooled["n_extra"]), "n_missed": int(pooled["n_missed"]),
            "fields": per_field}


def summarise(folds: list[dict]) -> dict:
    """Means over a model's folds (each fold weighs the same), its worst field and its totals."""
    fields = {name: scores for fold in folds for name, scores in fold["fields"].items()}
    return {"folds": len(folds),
            **{key: round(fmean(fold[key] for fold in folds), 4) for key in ("nucleus_dice", "f1", "fnro")},
            "field_dice_min": min(scores["nucleus_dice"] for scores in fields.values()),
            "n_extra": sum(fold["n_extra"] for fold in folds), "n_missed": sum(fold["n_missed"] for fold in folds),
            "train_minutes": round(sum(fold["train_seconds"] for fold in folds) / 60, 2),
            "train_images_per_s": round(fmean(fold["train_images_per_s"] for fold in folds), 1),
            "infer_seconds_per_field": round(fmean(s["infer_seconds"] for s in fields.values()), 3)}


def device_name() -> str:
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return str(jax.devices()[0].device_kind)
    return keras.backend.backend()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fields", type=Path, default=DEFAULT_FIELDS, help="ISBI-layout whole fields.")
    parser.add_argument("--model", action="append", required=True, metavar="'CONFIG steps=N|seconds=S [k=v ...]'",
                        help="A config, its budget and overrides (repeatable; each trains on every fold).")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only", default=None, help="Run only these folds, e.g. 0,1 (default: all).")
    parser.add_argument("--precision", choices=PRECISIONS, default="mixed_bfloat16")
    parser.add_argument("--out", type=Path, default=None, help="Append one JSON line per finished fold here.")
    args = parser.parse_args(argv)

    from train.config import ConfigError, load_config

    try:  # everything is checked before the first model trains
        specs = [parse_model_spec(text) for text in args.model]
        configs = [load_config(spec.config, spec.overrides) for spec in specs]
        refs = {ref.name: ref for ref in discover_png_pairs(args.fields)}
        try:
            plan = field_fold_plan(list(refs), args.folds)
        except ValueError as err:
            raise ValueError(f"--fields {args.fields}: {err} (--folds)") from None
        try:
            chosen = (sorted({int(k) for k in args.only.split(",")}) if args.only else [f["fold"] for f in plan])
        except ValueError:
            raise ValueError(f"--only {args.only!r}: expected fold numbers, e.g. 0,1") from None
        for wanted, what in [(chosen, f"--only {args.only}"),
                             *((spec.folds, f"--model {spec.name!r} folds=") for spec in specs if spec.folds)]:
            if not set(wanted) <= {f["fold"] for f in plan}:
                raise ValueError(f"{what}: folds are 0-{args.folds - 1}")
    except (ValueError, ConfigError, InputError) as err:
        parser.error(str(err))
    if args.out is not None and args.out.exists():
        parser.error(f"--out {args.out} exists: give a new file")
    device = device_name()
    print(f"bench-gpu-folds on {device}: {len(refs)} fields, folds {chosen}, {len(specs)} model(s)", flush=True)
    fields = read_fields(refs)
    results = {spec.name: [] for spec in specs}
    for spec, config in zip(specs, configs, strict=True):
        trainer = FoldTrainer(spec, config, args.precision)
        model = trainer.model
        for fold in (f for f in plan if f["fold"] in chosen and (spec.folds is None or f["fold"] in spec.folds)):
            print(f"{spec.name}: fold {fold['fold']} (held out {' '.join(fold['test_sources'])})", flush=True)
            figures = trainer.train(training_fields(fold["train_sources"], fields, config), log=print)
            scores = score_fields(model, config, fold["test_sources"], fields, refs)
            row = {"model": spec.name, "fold": fold["fold"], "device": device, "precision": args.precision,
                   "parameters": int(model.count_params()), **figures, **scores}
            results[spec.name].append(row)
            print(f"  nucleus Dice {row['nucleus_dice']:.4f}, object F1 {row['f1']:.4f}, "
                  f"{row['n_extra']} extra, {row['n_missed']} missed", flush=True)
            if args.out is not None:
                with args.out.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(row) + "\n")
        del trainer, model
    print(json.dumps({"device": device, "precision": args.precision,
                      "models": {name: {**summarise(rows), "parameters": rows[0]["parameters"], "runs": rows}
                                 for name, rows in results.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
