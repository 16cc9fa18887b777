"""Nucleus quality on real EDF sources never seen in training, within a CPU budget.

    python bench/bench_real.py --train-edf DIR --test-edf DIR [--out DIR] [--config configs/bench_cpu.config]

1. `prep run` on TRAIN_EDF (test ratio 0). With --valid-on synth (the default) every TRAIN_EDF source trains and
   the run is monitored on SYNTH_VALID_FIELDS extra synthetic fields; with --valid-on real a fifth of TRAIN_EDF's
   sources is held out as the validation split instead (never trained on). The validation split only draws the
   curves and montages: the last weights are kept, so with a handful of real sources holding one out only costs
   training data. With --synth N (default 0: real tiles alone), `prep synth` makes N synthetic fields and
   `prep run --no-augment` tiles them into extra training tiles. --prep-flags adds `prep run` flags
   for the real tiles (default: three pale-nucleus copies of each, --fade-factors 0.3,0.45,0.6; '' for none);
2. `train fit` of the config (its [train] max_train_seconds is the budget, ≤ 15 min on 2 cores);
3. `infer` of every full-size image of TEST_EDF (ISBI layout) with --infer-flags, scored against its *_GT.png;
   `--exclude-border` drops the nuclei cut by the field's edge, which the ISBI ground truth leaves unannotated:
   every edge of a whole field, or for tiles of one the edges TEST_EDF/field_edges.csv names (make_folds writes it).
The last line printed is one JSON object (nucleus_dice is the mean over test images; *_pooled over pixels).
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import click  # noqa: E402

# --valid-on synth monitors the run on one synthetic 1024² field (4 tiles): about as cheap per epoch as the
# two real tiles it replaces, so the budget's training steps stay the same.
SYNTH_VALID_FIELDS = 1
# Pale copies of every real training tile (prep run --fade-factors): the annotated nuclei fade while the dark
# specks the ground truth leaves out stay dark, so darkness alone stops meaning "nucleus". Four six-fold runs with
# them (two with all eight flips and turns at inference, as the model trains with both) averaged 0.906, every one
# at or above 0.90, against 0.900 for five runs without (README, bench/results/loso_runs.csv).
DEFAULT_PREP_FLAGS: tuple[str, ...] = ("--fade-factors", "0.3,0.45,0.6")
# `prep synth` 1024² fields added to the real training tiles. None since 2026-12-01: by the Defaults rule
# (docs/results.md), two whole-field runs without them scored nucleus Dice 0.908 / 0.911 (F1 0.907 / 0.922)
# against 0.907 / 0.900 (F1 0.926 / 0.901) with 32, the same infer preset.
DEFAULT_SYNTH = 0
DEFAULT_INFER_FLAGS = "--preset recommended"  # infer's own defaults (infer.cli.PRESETS), named for the record
VALID_ON = ("synth", "real")  # --valid-on's choices; the first is the default
# The README's runs trained 88-107 epochs of 50 steps a fold (4,400-5,350 steps) in the 840-s budget, on a host at
# speed; a run with fewer steps than this is warned of (a slower host, or emulated bfloat16).
FULL_BUDGET_STEPS = 4000
FIELD_EDGES = "field_edges.csv"  # in TEST_EDF: which edges of each tile are its field's (see make_folds)
DATA_KEYS = {
    "train.images_dir": "./dataset/train/images", "train.masks_dir": "./dataset/train/masks",
    "valid.images_dir": "./dataset/valid/images", "valid.masks_dir": "./dataset/valid/masks",
    "test.images_dir": "./dataset/valid/images", "test.masks_dir": "./dataset/valid/masks",
    "train.model_dir": "./models", "train.eval_dir": "./eval",
    "train.epoch_change_infer_dir": "./epoch_change_infer",
}


def _run(command: click.Command, args: list[str]) -> None:
    try:
        command.main(args, standalone_mode=False)
    except click.ClickException as err:
        raise SystemExit(f"bench-real: {command.name or 'step'} failed: {err.format_message()}") from None


class OptionsError(ValueError):
    """Options of a bench run that cannot work together, refused before any step (main says it as a message)."""


def check_ignored_colour(prep_flags: Sequence[str], rgb_map: dict) -> None:
    """Before any tiling: prep's --gt-rule auto-ignore-line writes lines (128,128,128) that the config must map to
    the ignored class, or training would stop at its first mask, minutes into the run."""
    flags = list(prep_flags)
    rules = [flags[i + 1] for i, flag in enumerate(flags[:-1]) if flag in ("--gt-rule", "--mask-rule")]
    rules += [flag.split("=", 1)[1] for flag in flags if flag.startswith(("--gt-rule=", "--mask-rule="))]
    from prep.imageio import IGNORE_LEVEL
    from train.config import IGNORE_CLASS

    grey = (IGNORE_LEVEL,) * 3
    if "auto-ignore-line" in rules and rgb_map.get(grey) != IGNORE_CLASS:
        raise OptionsError(f"--prep-flags --gt-rule auto-ignore-line writes an outline's line as {grey}: map it to "
                           f"the ignored class, --set 'mask.rgb_map={{(0,0,0):0,(255,255,255):1,"
                           f"({IGNORE_LEVEL},{IGNORE_LEVEL},{IGNORE_LEVEL}):{IGNORE_CLASS}}}'")


def bench_real(train_edf: Path, test_edf: Path, out: Path, config: Path, overrides: list[str],
               infer_flags: list[str], valid_ratio: float = 0.2, synth: int = 0, synth_seed: int = 2014,
               valid_on: str = VALID_ON[0], prep_flags: Sequence[str] = DEFAULT_PREP_FLAGS,
               synth_only: bool = False) -> dict:
    """``synth_only``: train on the synthetic fields alone, no real pixel (the baseline of what real data adds)."""
    from infer.cli import cli as infer_cli
    from prep.cli import cli as prep_cli
    from train.cli import cli as train_cli
    from train.config import load_config

    loaded = load_config(config, overrides)
    tile = loaded.model.image_height  # tiles must be the model's input size
    check_ignored_colour(prep_flags, loaded.mask.rgb_map)
    if valid_on not in VALID_ON:
        raise ValueError(f"valid_on must be one of {VALID_ON}, not {valid_on!r}")
    if synth_only and (synth == 0 or valid_on != "synth"):
        raise ValueError("synth_only needs synthetic fields (synth > 0) and valid_on 'synth'")
    out.mkdir(parents=True, exist_ok=True)
    real_valid = valid_ratio if valid_on == "real" else 0.0
    if not synth_only:
        _run(prep_cli, ["run", "--input", str(train_edf), "--output", str(out / "dataset"), "--overwrite",
                        "--split", f"{1 - real_valid:g},{real_valid:g},0", "--tile-size", str(tile),
                        "--no-progress", *prep_flags])
    data_keys = dict(DATA_KEYS)
    synth_valid = SYNTH_VALID_FIELDS if valid_on == "synth" else 0
    if synth + synth_valid:
        fields = synth + synth_valid
        _run(prep_cli, ["synth", "--output", str(out / "synth-edf"), "--count", str(fields), "--size", "1024",
                        "--seed", str(synth_seed), "--overwrite", "--no-progress"])
        # Whole fields go to train or valid (split by source, so no field has tiles on both sides).
        _run(prep_cli, ["run", "--input", str(out / "synth-edf"), "--output", str(out / "synth-dataset"),
                        "--overwrite", "--split", f"{synth / fields:g},{synth_valid / fields:g},0",
                        "--tile-size", str(tile), "--no-augment", "--no-progress"])
    if synth_valid:
        data_keys.update({"valid.images_dir": "./synth-dataset/valid/images",
                          "valid.masks_dir": "./synth-dataset/valid/masks",
                          "test.images_dir": "./synth-dataset/valid/images",
                          "test.masks_dir": "./synth-dataset/valid/masks"})
    if synth:
        real = [] if synth_only else [out / "dataset" / "train"]
        train_tiles = mix_training_tiles([*real, out / "synth-dataset" / "train"], out / "train-mix")
        data_keys.update({"train.images_dir": "./train-mix/images", "train.masks_dir": "./train-mix/masks"})
    else:
        train_tiles = len(list((out / "dataset" / "train" / "images").glob("*.png")))
    run_config = out / "train_eval_infer.config"
    shutil.copyfile(config, run_config)
    settings = [item for key, value in data_keys.items() for item in ("--set", f"{key}={value}")]
    settings += [item for override in overrides for item in ("--set", override)]
    start = time.monotonic()
    # --fresh: a fold run again (bench-folds --resume) trains from scratch, never on from a stopped run's backup,
    # whose wall clock would start again: every fold gets the same budget.
    _run(train_cli, ["fit", "--config", str(run_config), *settings, "--overwrite", "--fresh"])
    train_seconds = time.monotonic() - start
    infer_flags = list(infer_flags)
    if excludes_border(infer_flags) and (test_edf / FIELD_EDGES).is_file():
        infer_flags += ["--field-edges", str(test_edf / FIELD_EDGES)]
    _run(infer_cli, ["--config", str(run_config), *settings, "--input", str(test_edf), "--gt", str(test_edf),
                     "--output", str(out / "infer"), "--overwrite", "--no-progress", *infer_flags])
    summary = summarise(out, train_seconds, out / ("synth-dataset" if synth_only else "dataset"))
    summary.update(training_record(run_config, settings, out / "models"))
    summary["infer_flags"] = " ".join(infer_flags)
    # What the flags came to (a preset's meaning changes when a rule changes it): infer's own record of its options.
    options = json.loads((out / "infer" / "infer.json").read_text())["options"]
    summary["infer_options"] = {key: value for key, value in options.items() if key != "field_edges"}
    summary["synth_images"] = synth
    summary["valid_on"] = valid_on
    summary["prep_flags"] = shlex.join(prep_flags)
    summary["train_tiles"] = train_tiles
    summary["synth_only"] = synth_only
    return summary


def training_record(run_config: Path, settings: list[str], model_dir: Path) -> dict:
    """The steps the run trained (its card's epochs × the config's steps_per_epoch) and the precision it trained
    at (the card's ``train_precision``)."""
    from train.card import read_card
    from train.config import load_config

    card = read_card(model_dir)
    config = load_config(run_config, settings[1::2])  # settings: "--set", "key=value", ...
    per_epoch = config.train.steps_per_epoch
    return {"steps": card["epochs"] * per_epoch if per_epoch else None,
            "train_precision": card.get("train_precision")}


def few_steps_warning(steps: int | None, precision: str | None = None) -> str | None:
    """Why this run's scores are not comparable with the recorded ones, or None: the budget is wall-clock, and a
    host that trains fewer than FULL_BUDGET_STEPS in it gets a weaker model."""
    if steps is None or steps >= FULL_BUDGET_STEPS:
        return None
    return (f"warning: {steps:,} training steps in the budget{f' (at {precision})' if precision else ''}, where a "
            f"host at speed trains {FULL_BUDGET_STEPS:,}+: this host is slower, and its scores are a weaker model's. "
            "To compare with the recorded runs, train for steps: --set train.max_train_seconds=None --set "
            "train.epochs=100 (5,000 steps)")


def excludes_border(flags: list[str]) -> bool:
    """Whether infer, given ``flags``, drops nuclei on the field's edge: said outright, or by its --preset (parsed
    by infer's own command line, so its rules decide)."""
    from infer.cli import cli as infer_cli
    from infer.cli import preset_value

    params = infer_cli.make_context("infer", list(flags)).params
    return bool(preset_value(params["preset"], "exclude_border", params["exclude_border"]))


def mix_training_tiles(splits: list[Path], mixed: Path) -> int:
    """One images/ + masks/ folder of links to the tiles of several prepared splits (name-prefixed by their
    dataset, so equal tile names cannot collide); returns the number of tiles."""
    if mixed.exists():
        shutil.rmtree(mixed)
    count = 0
    for split in splits:
        prefix = split.parent.name
        for kind in ("images", "masks"):
            (mixed / kind).mkdir(parents=True, exist_ok=True)
            for tile in sorted((split / kind).glob("*.png")):
                (mixed / kind / f"{prefix}_{tile.name}").symlink_to(tile.resolve())
                count += kind == "images"
    return count


def _read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def summarise(out: Path, train_seconds: float, dataset: Path | None = None) -> dict:
    """The run's scores from its infer output; ``dataset`` (default OUT/dataset) is the prep record of its training
    tiles."""
    rows = _read_rows(out / "infer" / "scores.csv")
    pooled = next(row for row in rows if row["file"] == "POOLED")
    images = [row for row in rows if row["file"] != "POOLED"]
    seconds = {row["file"]: float(row["seconds"]) for row in _read_rows(out / "infer" / "predictions.csv")}
    record = json.loads(((dataset or out / "dataset") / "prep.json").read_text())
    history = json.loads((out / "eval" / "history.json").read_text())

    def number(row: dict, key: str) -> float:
        return float(row[key])

    return {
        "nucleus_dice": round(number(pooled, "mean_nucleus_dice"), 4),
        "nucleus_iou": round(number(pooled, "mean_nucleus_iou"), 4),
        "nucleus_dice_pooled": round(number(pooled, "nucleus_dice"), 4),
        "nucleus_iou_pooled": round(number(pooled, "nucleus_iou"), 4),
        "object_dice": round(number(pooled, "object_dice"), 4),
        "fnro": round(number(pooled, "fnro"), 4),
        "f1": round(number(pooled, "object_f1"), 4),
        "outline_dice": round(number(pooled, "mean_outline_dice"), 4),
        "n_extra": int(pooled["n_extra"]),
        "n_missed": int(pooled["n_missed"]),
        "per_image_dice": {row["file"]: round(number(row, "nucleus_dice"), 4) for row in images},
        # Each test image's own scores: its nuclei found (object F1, FNRo), the extra and the missed, and the
        # wall seconds infer took for it (read, predict with the infer flags, write).
        "per_image": {row["file"]: {"nucleus_dice": round(number(row, "nucleus_dice"), 4),
                                    "f1": round(number(row, "object_f1"), 4), "fnro": round(number(row, "fnro"), 4),
                                    "n_extra": int(row["n_extra"]), "n_missed": int(row["n_missed"]),
                                    "infer_seconds": round(seconds[row["file"]], 2)}
                      for row in images},
        "infer_seconds_per_image": round(sum(seconds[row["file"]] for row in images) / max(len(images), 1), 2),
        "train_seconds": round(train_seconds, 1),
        "epochs": len(history["epoch"]),
        "train_sources": record["splits"]["train"],
        "valid_sources": record["splits"]["valid"],
        "test_images": len(images),
    }


def _split_flags(_ctx, param, text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as err:  # an unclosed quote
        raise click.BadParameter(f"{text!r}: {err}", param=param) from None


def run_options(command):
    """The options of one bench-real run (config, overrides, infer and prep flags, synthetic fields).

    Shared by bench-folds."""
    options = [
        click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     default=REPO / "configs" / "bench_cpu.config", show_default=True),
        click.option("--set", "overrides", multiple=True, help="Config override, e.g. train.max_train_seconds=600."),
        click.option("--infer-flags", default=DEFAULT_INFER_FLAGS, show_default=True,
                     help="Flags passed to infer (TTA and post-processing)."),
        click.option("--synth", type=click.IntRange(min=0), default=DEFAULT_SYNTH, show_default=True,
                     help="Synthetic 1024² fields added as extra training tiles (0: real tiles only)."),
        click.option("--valid-on", type=click.Choice(VALID_ON), default=VALID_ON[0], show_default=True,
                     help="Validation split (it only draws curves and montages): synth = extra synthetic field(s), "
                          "every TRAIN_EDF source trains; real = a fifth of TRAIN_EDF's sources, held out of "
                          "training."),
        click.option("--synth-only", is_flag=True,
                     help="Train on the synthetic fields alone (no real pixel): what the real fields add."),
        click.option("--prep-flags", default=shlex.join(DEFAULT_PREP_FLAGS), show_default=True,
                     callback=_split_flags,
                     help="Extra flags for `prep run` on TRAIN_EDF's real images (augmentations beyond the "
                          "reference's; '' for none); the synthetic fields stay unaugmented."),
    ]
    for option in reversed(options):  # decorators apply bottom-up; keep --help in this order
        command = option(command)
    return command


@click.command()
@click.option("--train-edf", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--test-edf", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Keep everything here (default: a temp folder).")
@run_options
def main(train_edf: Path, test_edf: Path, out: Path | None, config: Path, overrides, infer_flags: str,
         synth: int, valid_on: str, synth_only: bool, prep_flags: list[str]) -> None:
    """Train on TRAIN_EDF's sources, score stitched predictions of TEST_EDF's images."""
    try:
        with tempfile.TemporaryDirectory(prefix="bench-real-") as scratch:
            summary = bench_real(train_edf, test_edf, out or Path(scratch), config, list(overrides),
                                 infer_flags.split(), synth=synth, valid_on=valid_on, prep_flags=prep_flags,
                                 synth_only=synth_only)
    except OptionsError as err:  # raised before bench_real makes or writes anything
        raise click.ClickException(str(err)) from None
    warning = few_steps_warning(summary["steps"], summary["train_precision"])
    if warning:
        click.echo(warning, err=True)
    click.echo(json.dumps(summary))


if __name__ == "__main__":
    main()
