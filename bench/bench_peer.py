"""The peer, side by side: StarDist 2D trained from scratch on the same fields, in the same wall-clock budget, with
its own conventions, scored by our scorer on the same held-out fields as our model.

    python bench/bench_peer.py --train-edf DIR --test-edf DIR [--out DIR] [--peer-only]

1. Ours: `bench_real` on TRAIN_EDF / TEST_EDF (its defaults; skipped with --peer-only).
2. StarDist 0.9.2 (the bench-only extra `.[peers]`, never a runtime dependency): the TRAIN_EDF fields with their
   ground truth as published (outlines filled, as prep reads them), nuclei labelled as 4-connected components;
   a validation share of those fields (at least one) held out for StarDist's own model selection and
   `optimize_thresholds`, never a test field; per-image `normalize(x, 1, 99.8)`, `Config2D(n_rays=32, grid=(2,2))`,
   256² patches, StarDist's example augmenter (flips and quarter turns, intensity ×U(0.6, 2) + U(−0.2, 0.2),
   Gaussian noise of σ ≤ 0.02), trained until the budget ends (`[train] max_train_seconds` of the config, the
   same budget as ours; checked after every batch, as ours is). Then `predict_instances` on each TEST_EDF field.
3. Both scored by `train.scores.score_masks`: each system's own output, and with the ISBI field-edge rule that
   our infer applies (`--exclude-border`: nuclei cut by the field's edge are not annotated), so the difference
   the rule makes is shown, not hidden.

The last line printed is one JSON object: per system, the per-field Dice, object F1, FNRo, extra and missed
nuclei and seconds per field, and their means.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from statistics import fmean, median

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import click  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

DEFAULT_CONFIG = REPO / "configs" / "bench_cpu.config"
FIELD_EDGES = "field_edges.csv"
VALID_SHARE = 0.15  # StarDist's example notebooks hold out 15 % of the training images for validation
PER_FIELD_KEYS = ("nucleus_dice", "f1", "fnro", "n_extra", "n_missed", "seconds")


def stardist_available() -> bool:
    try:
        import stardist  # noqa: F401
    except ImportError:
        return False
    return True


def load_fields(folder: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(file name, grey uint8 image, boolean nucleus mask) of every ISBI pair in ``folder``, the ground truth read
    as prep reads it (prep.truth: filled masks as they are, outlines filled)."""
    from prep.edf import check_truths, discover_png_pairs, load_source

    fields = []
    for ref in check_truths(discover_png_pairs(folder), warn=lambda message: None):
        image, mask = load_source(ref)
        fields.append((ref.image_path.name, np.rint(image.mean(axis=2)).astype(np.uint8), mask))
    return fields


def instance_labels(mask: np.ndarray) -> np.ndarray:
    """The nuclei of a binary mask as instance ids (4-connected, as prep.truth counts them)."""
    return ndimage.label(mask, structure=ndimage.generate_binary_structure(2, 1))[0].astype(np.int32)


def augment_like_the_stardist_example(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """StarDist's example augmenter, written from its description: a random quarter turn / transpose and flips
    (the same for image and labels), intensity × U(0.6, 2) + U(−0.2, 0.2), additive noise σ ~ U(0, 0.02). Draws
    from numpy's global generator, which StarDist's ``train(seed=…)`` seeds."""
    if np.random.rand() < 0.5:
        x, y = x.T, y.T
    for axis in (0, 1):
        if np.random.rand() < 0.5:
            x, y = np.flip(x, axis), np.flip(y, axis)
    x = x * np.random.uniform(0.6, 2) + np.random.uniform(-0.2, 0.2)
    x = x + np.random.uniform(0, 0.02) * np.random.normal(0, 1, x.shape)
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y)


def split_validation(names: list[str]) -> tuple[list[str], list[str]]:
    """Training and validation fields: the last ⌈15 %⌉ (at least one) in name order validate, the rest train."""
    if len(names) < 2:
        raise ValueError(f"StarDist needs at least 2 training fields (one validates), got {len(names)}")
    count = max(1, round(VALID_SHARE * len(names)))
    return names[:-count], names[-count:]


def train_stardist(fields, out: Path, seconds: float, seed: int, patch: int, steps_per_epoch: int,
                   batch_size: int) -> tuple[object, dict]:
    import keras
    from csbdeep.utils import normalize
    from stardist.models import Config2D, StarDist2D

    from train.callbacks import TimeBudget

    names = [name for name, _, _ in fields]
    train_names, valid_names = split_validation(names)
    by_name = {name: (normalize(grey, 1, 99.8, axis=(0, 1)).astype(np.float32), instance_labels(mask))
               for name, grey, mask in fields}
    x_train = [by_name[name][0] for name in train_names]
    y_train = [by_name[name][1] for name in train_names]
    x_valid = [by_name[name][0] for name in valid_names]
    y_valid = [by_name[name][1] for name in valid_names]
    keras.utils.set_random_seed(seed)
    config = Config2D(n_rays=32, grid=(2, 2), n_channel_in=1, train_patch_size=(patch, patch),
                      train_batch_size=batch_size, train_steps_per_epoch=steps_per_epoch, train_epochs=100_000)
    model = StarDist2D(config, name="stardist", basedir=str(out))
    model.prepare_for_training()
    model.callbacks.append(TimeBudget(seconds))
    start = time.monotonic()
    history = model.train(x_train, y_train, validation_data=(x_valid, y_valid),
                          augmenter=augment_like_the_stardist_example, seed=seed)
    train_seconds = time.monotonic() - start
    start = time.monotonic()
    thresholds = model.optimize_thresholds(x_valid, y_valid)
    return model, {"train_fields": train_names, "valid_fields": valid_names, "train_seconds": round(train_seconds, 1),
                   "epochs": len(history.history.get("loss", [])),
                   "optimize_seconds": round(time.monotonic() - start, 1),
                   "thresholds": {key: float(value) for key, value in dict(thresholds).items()}}


def predict_stardist(model, fields) -> dict[str, tuple[np.ndarray, float]]:
    """Each field's StarDist nuclei (binary mask) and the wall seconds from raw image to labels."""
    from csbdeep.utils import normalize

    predictions = {}
    for name, grey, _ in fields:
        start = time.monotonic()
        labels, _details = model.predict_instances(normalize(grey, 1, 99.8, axis=(0, 1)))
        predictions[name] = (labels > 0, time.monotonic() - start)
    return predictions


def score_fields(truths: dict[str, np.ndarray], predictions: dict[str, tuple[np.ndarray, float]],
                 field_edges: dict[str, tuple[str, ...]] | None = None) -> dict:
    """Our scorer on each field; with ``field_edges`` (file → its edges that are the field's; unlisted files: all
    four) the nuclei cut by the field's edge are dropped first, as `infer --exclude-border` does."""
    from infer.measure import EDGES, clean_mask
    from train.scores import pool_scores, score_masks

    rows, per_field = [], {}
    for name, (mask, seconds) in predictions.items():
        if field_edges is not None:
            mask = clean_mask(mask, exclude_border=True, field_edges=field_edges.get(name, EDGES))
        scores = score_masks(truths[name], mask)
        rows.append(scores)
        per_field[name] = {"nucleus_dice": round(scores["nucleus_dice"], 4), "f1": round(scores["object_f1"], 4),
                           "fnro": round(scores["fnro"], 4), "n_extra": int(scores["n_extra"]),
                           "n_missed": int(scores["n_missed"]), "seconds": round(seconds, 3)}
    pooled = pool_scores(rows)
    return {"nucleus_dice": round(pooled["mean_nucleus_dice"], 4), "f1": round(pooled["object_f1"], 4),
            "fnro": round(pooled["fnro"], 4), "n_extra": int(pooled["n_extra"]), "n_missed": int(pooled["n_missed"]),
            "seconds_per_field": round(fmean(v["seconds"] for v in per_field.values()), 3),
            "seconds_per_field_median": round(median(v["seconds"] for v in per_field.values()), 3),
            "per_field": per_field}


def ours_per_field(summary: dict) -> dict:
    """bench_real's summary in the peer's layout, so the two read side by side."""
    per_field = {name: {key: scores[key if key != "seconds" else "infer_seconds"] for key in PER_FIELD_KEYS}
                 for name, scores in summary["per_image"].items()}
    seconds = [v["seconds"] for v in per_field.values()]
    return {"nucleus_dice": summary["nucleus_dice"], "f1": summary["f1"], "fnro": summary["fnro"],
            "n_extra": summary["n_extra"], "n_missed": summary["n_missed"],
            "seconds_per_field": round(fmean(seconds), 3), "seconds_per_field_median": round(median(seconds), 3),
            "train_seconds": summary["train_seconds"], "epochs": summary["epochs"], "per_field": per_field}


def bench_peer(train_edf: Path, test_edf: Path, out: Path, config: Path, seed: int = 2014, patch: int = 256,
               steps_per_epoch: int = 100, batch_size: int = 4, seconds: float | None = None) -> dict:
    """StarDist on TRAIN_EDF → TEST_EDF; ``seconds`` defaults to the config's [train] max_train_seconds."""
    from infer.run import read_field_edges
    from train.config import load_config

    if not stardist_available():
        raise click.ClickException("StarDist is not installed: pip install -e '.[peers]'")
    budget = seconds if seconds is not None else load_config(config).train.max_train_seconds
    if not budget:
        raise click.ClickException(f"{config}: [train] max_train_seconds is not set: give --seconds")
    out.mkdir(parents=True, exist_ok=True)
    training = load_fields(train_edf)
    tests = load_fields(test_edf)
    model, record = train_stardist(training, out, budget, seed, patch, steps_per_epoch, batch_size)
    predictions = predict_stardist(model, tests)
    truths = {name: mask for name, _, mask in tests}
    edges = read_field_edges(test_edf / FIELD_EDGES) if (test_edf / FIELD_EDGES).is_file() else {}
    own = score_fields(truths, predictions)
    return {**score_fields(truths, predictions, edges), **record, "budget_seconds": budget,
            "without_edge_rule": {key: own[key] for key in ("nucleus_dice", "f1", "fnro", "n_extra", "n_missed")},
            "stardist_version": __import__("stardist").__version__}


@click.command()
@click.option("--train-edf", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--test-edf", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Keep everything here (default: a temp folder).")
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=DEFAULT_CONFIG,
              show_default=True, help="Our model's config; its [train] max_train_seconds is both budgets.")
@click.option("--seconds", type=click.FloatRange(min=1), help="StarDist's training budget (default: the config's).")
@click.option("--patch", type=click.IntRange(min=32), default=256, show_default=True, help="StarDist patch edge.")
@click.option("--steps-per-epoch", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--peer-only", is_flag=True, help="Train and score StarDist only (not our model).")
def main(train_edf: Path, test_edf: Path, out: Path | None, config: Path, seconds: float | None, patch: int,
         steps_per_epoch: int, peer_only: bool) -> None:
    """Train StarDist 2D (and our model) on TRAIN_EDF's fields, score both on TEST_EDF's."""
    from bench_real import DEFAULT_INFER_FLAGS, DEFAULT_PREP_FLAGS, DEFAULT_SYNTH, bench_real

    if patch % 16:
        raise click.BadParameter(f"{patch} is not a multiple of 16 (StarDist's U-Net)", param_hint="--patch")
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as scratch:
        root = out or Path(scratch)
        result = {}
        if not peer_only:
            ours = bench_real(train_edf, test_edf, root / "ours", config, [], DEFAULT_INFER_FLAGS.split(),
                              synth=DEFAULT_SYNTH, prep_flags=DEFAULT_PREP_FLAGS)
            result["ours"] = ours_per_field(ours)
        result["stardist"] = bench_peer(train_edf, test_edf, root / "stardist", config, patch=patch,
                                        steps_per_epoch=steps_per_epoch, seconds=seconds)
    click.echo(json.dumps(result))


if __name__ == "__main__":
    main()
