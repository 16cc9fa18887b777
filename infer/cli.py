"""``infer`` command line: full-size nucleus masks for EDF images by stitching tile predictions."""

from __future__ import annotations

import math
import os
import sys
import warnings
from pathlib import Path

import click

from prep.console import RecordedCommand, show_warning
from prep.imageio import DEFAULT_MAX_PIXELS
from prep.truth import GT_RULES
from train.model import PRECISIONS  # the model's face imports no Keras: the command line stays quick

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # see train/cli.py


# infer's defaults: the settings measured best on the whole-field folds (docs/results.md: the fastest within
# 0.005 nucleus Dice and 0.01 object F1 of eight-view TTA on tiles, in every run; the min-confidence bar by the
# clean-up round 1 rule). Each flag given overrides its preset value; --preset bare is the reference's plain
# prediction (stitched tiles, no TTA, no clean-up).
PRESETS = {
    "recommended": {"mode": "whole", "tta": True, "tta_mode": "2", "precision": "auto", "min_area": 30,
                    "fill_holes": True, "exclude_border": True, "min_confidence": 0.85},
    "bare": {"mode": "full", "tta": False, "tta_mode": "4", "precision": "float32", "min_area": 0,
             "fill_holes": False, "exclude_border": False, "min_confidence": 0.0},
}
PRESET_KEYS = tuple(PRESETS["recommended"])


def preset_value(preset: str, key: str, given):
    """A setting as infer uses it: the flag's value when given, else the preset's."""
    return PRESETS[preset][key] if given is None else given


def preset_text(name: str) -> str:
    """A preset as the flags it stands for."""
    values = PRESETS[name]
    flags = [f"--mode {values['mode']}", f"--tta --tta-mode {values['tta_mode']}" if values["tta"] else "--no-tta",
             f"--precision {values['precision']}", f"--min-area {values['min_area']}",
             "--fill-holes" if values["fill_holes"] else "--no-fill-holes",
             "--exclude-border" if values["exclude_border"] else "--keep-border",
             f"--min-confidence {values['min_confidence']:g}"]
    return " ".join(flags)


def _shard(ctx, param, value):
    """'K/N' → (K, N) with 1 ≤ K ≤ N."""
    if value is None:
        return None
    index, sep, count = value.partition("/")
    if not (sep and index.strip().isdigit() and count.strip().isdigit() and 1 <= int(index) <= int(count)):
        raise click.BadParameter(f"{value!r}: expected K/N with 1 ≤ K ≤ N, e.g. 2/8", ctx=ctx, param=param)
    return int(index), int(count)


def shard_of(inputs: list, index: int, count: int) -> list:
    """The K-th (1-based) of ``count`` slices of the inputs in name order: every count-th from the K-th."""
    return sorted(inputs, key=lambda path: str(path))[index - 1 :: count]


def _finite(ctx, param, value):
    """click's FloatRange lets NaN through (every comparison with it is false)."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number", ctx=ctx, param=param)
    return value



@click.command(cls=RecordedCommand, context_settings={"help_option_names": ["-h", "--help"],
                                                     "max_content_width": 110})
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="The training config (its model and [infer] folders). Or --model.")
@click.option("--model", "model_path", type=click.Path(path_type=Path),
              help="A trained-model folder (a `train fit` model_dir: weights, config copy, model.json): no config "
                   "file needed; give --input and --output.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override a config key.")
@click.option("--input", "input_path", type=click.Path(path_type=Path),
              help="Image file or folder (default: [infer] images_dir). *_GT files are skipped in a folder and refused "
                   "as a single file.")
@click.option("--output", "output_path", type=click.Path(path_type=Path),
              help="Output folder (default: [infer] output_dir).")
@click.option("--overlap", type=click.FloatRange(0, 0.9), default=0.25, show_default=True, callback=_finite,
              help="Tile overlap fraction; overlapping predictions are blended with Gaussian weights.")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="recommended", show_default=True,
              help=f"Default settings: recommended = {preset_text('recommended')} (measured on whole ISBI fields); "
                   f"bare = {preset_text('bare')} (the reference's). Any flag below overrides its preset value.")
@click.option("--tta/--no-tta", default=None, show_default="by --preset",
              help="Average flipped views of each image (--tta-mode: the recommended preset's 2, the mirror image, "
                   "costs 2×; bare's 4, the flips, 4×; 8, every flip and quarter turn, 8×).")
@click.option("--tta-mode", type=click.Choice(["2", "4", "8"]), default=None, show_default="by --preset",
              help="With --tta: 2 = identity and its mirror image; 4 = the flips (identity, horizontal, vertical, "
                   "both); 8 = all eight flips and quarter turns.")
@click.option("--precision", type=click.Choice(["auto", *PRECISIONS]), default=None, show_default="by --preset",
              help="The network's compute (weights stay float32): bfloat16 takes 0.7x the time where the CPU has "
                   "AVX512-BF16 or AMX (probabilities move by about 1e-2); auto = bfloat16 on such a CPU without a "
                   "GPU, else float32.")
@click.option("--xla/--no-xla", default=False, show_default=True,
              help="Compile the prediction with XLA (jit_compile; each new image size compiles once).")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True, help="Tiles per predict.")
@click.option("--save-prob", is_flag=True, help="Also write probabilities/<stem>.npy (float32 nucleus probability).")
@click.option("--gt", "gt_dir", type=click.Path(path_type=Path),
              help="Folder of ground truth (ISBI layout EDFnnn_GT.png): score every prediction.")
@click.option("--gt-rule", type=click.Choice(GT_RULES), default=None,
              help="How the ground truth becomes nucleus masks, as prep run's --gt-rule: auto fills outline GT "
                   "(EDF000–003) with its line; auto-interior without it; auto-ignore-line without it and scores "
                   "its pixels as neither. Default: with --dataset the rule prep run used, else auto.")
@click.option("--dataset", "dataset_path", type=click.Path(path_type=Path),
              help="A `prep run` output: predict the full-size source images of --split (scored against their GT).")
@click.option("--split", type=click.Choice(["train", "valid", "test"]), default="test", show_default=True,
              help="With --dataset: whose sources to predict.")
@click.option("--mode", type=click.Choice(["full", "whole", "tiles"]), default=None, show_default="by --preset",
              help="full: stitched from overlapping model-size tiles (bounded memory, any size). whole: the image in "
                   "one pass of the fully convolutional network (padded to its pooling multiple; images over "
                   "4096² are stitched). tiles: images already the model's size are predicted whole, without "
                   "resizing (the reference's mini-test); other sizes are stitched.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True, callback=_finite,
              help="Nucleus probability above which a pixel is nucleus.")
@click.option("--min-area", type=click.IntRange(min=0), default=None, show_default="by --preset",
              help="Remove predicted nuclei smaller than this many pixels.")
@click.option("--fill-holes/--no-fill-holes", default=None, show_default="by --preset",
              help="Fill holes inside predicted nuclei.")
@click.option("--exclude-border/--keep-border", default=None, show_default="by --preset",
              help="Drop nuclei that touch the image's edge (cut by the field of view: not measurable, and "
                   "left unannotated by the ISBI 2014 ground truth). Every edge of a whole field; for tiles cut "
                   "from a field, give their field edges with --field-edges.")
@click.option("--field-edges", "field_edges_path", type=click.Path(path_type=Path),
              help="With --exclude-border: CSV (file,field_edges) naming, per image that is a tile of a larger "
                   "field, which of its edges (top bottom left right) are the field's. Unlisted images: all four.")
@click.option("--split-touching", is_flag=True,
              help="Split touching nuclei (distance-transform watershed), in the mask (a background line between "
                   "them), labels, GeoJSON and nuclei.csv alike.")
@click.option("--min-confidence", type=click.FloatRange(0, 1), default=None, show_default="by --preset",
              callback=_finite,
              help="Drop a predicted nucleus whose mean nucleus probability is below this (0: keep every one); "
                   "its outline is --threshold's. Most of the objects the ISBI ground truth leaves out are ones the "
                   "model is less sure of.")
@click.option("--labels/--no-labels", "write_labels", default=True, show_default=True,
              help="labels/<name>.png: 16-bit instance ids (0 = background), the id column of nuclei.csv.")
@click.option("--geojson/--no-geojson", "write_geojson", default=True, show_default=True,
              help="geojson/<name>.geojson: one polygon per nucleus with its measurements (QuPath: File > Import "
                   "objects).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Skip (and report) an image or GT whose header declares more pixels than this; read before "
                   "decoding.")
@click.option("--shard", callback=_shard, metavar="K/N",
              help="Predict only the K-th of N slices of the inputs (every N-th in name order, from the K-th), for "
                   "job arrays; each shard to its own --output, then: python -m infer.merge --output OUT SHARDS…")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--progress/--no-progress", default=lambda: sys.stderr.isatty(), show_default="when stderr is a terminal",
              help="Show a progress bar (one step per image).")
def cli(config_path: Path | None, model_path: Path | None, overrides, input_path: Path | None,
        output_path: Path | None, overlap: float, preset: str, tta: bool | None,
        tta_mode: str | None, precision: str | None, xla: bool, batch_size: int, save_prob: bool,
        gt_dir: Path | None, gt_rule: str, dataset_path: Path | None, split: str,
        mode: str, threshold: float, min_area: int, fill_holes: bool, exclude_border: bool,
        field_edges_path: Path | None, split_touching: bool, min_confidence: float | None, write_labels: bool,
        write_geojson: bool, max_pixels: int,
        shard: tuple[int, int] | None, overwrite: bool, progress: bool) -> None:
    """Predict full-size nucleus masks: mask PNG (same size, 0/255), overlays/, predictions.csv, nuclei.csv,
    and with --gt scores.csv."""
    warnings.showwarning = show_warning
    from tqdm import tqdm

    from infer.run import (
        InferError,
        check_output,
        dataset_gt_rule,
        dataset_sources,
        find_truth,
        list_inputs,
        predict_folder,
        read_field_edges,
    )
    from train.config import ConfigError, load_config
    from train.model import TrainError, config_of_model, run_paths

    try:
        if (config_path is None) == (model_path is None):
            raise InferError("give one of --config (a training config) and --model (a trained-model folder)")
        if model_path is not None:
            if input_path is None and dataset_path is None:
                raise InferError("--model needs --input (or --dataset): a model folder has no [infer] images_dir")
            if output_path is None:
                raise InferError("--model needs --output: a model folder has no [infer] output_dir")
            config = config_of_model(model_path, overrides)
        else:
            config = load_config(config_path, overrides)
        truth_of = None
        if dataset_path is not None:
            if input_path is not None:
                raise InferError("--dataset and --input: give one of them")
            truths = dict(dataset_sources(dataset_path, split))
            inputs = list(truths)
            truth_of = truths.get
            if gt_rule is None and gt_dir is None:
                gt_rule = dataset_gt_rule(dataset_path)
        else:
            inputs = list_inputs(input_path or config.infer.images_dir)
        every_input = inputs  # --field-edges is checked against all of them, not this shard's
        if shard is not None:
            inputs = shard_of(inputs, *shard)
            if not inputs:
                raise InferError(f"--shard {shard[0]}/{shard[1]}: no input falls in this shard (fewer inputs than "
                                 "shards)")
        if gt_dir is not None:
            if not gt_dir.is_dir():
                raise InferError(f"{gt_dir}: --gt folder does not exist")
            truth_of = lambda image: find_truth(gt_dir, image)  # noqa: E731
        field_edges = {}
        if field_edges_path is not None:
            if not preset_value(preset, "exclude_border", exclude_border):
                raise InferError("--field-edges only says where --exclude-border applies: give both")
            field_edges = read_field_edges(field_edges_path)
            unknown = sorted(set(field_edges) - {image.name for image in every_input})
            if unknown:
                warnings.warn(f"{field_edges_path}: {len(unknown)} listed file(s) not among the inputs "
                              f"(first: {unknown[0]})", stacklevel=1)
        output = (output_path or config.infer.output_dir).expanduser()
        check_output(output, [path.parent for path in inputs] + ([gt_dir] if gt_dir is not None else [])
                     + [truth.parent for truth in (truths.values() if dataset_path is not None else [])],
                     kept=[("the model folder", run_paths(config).model_dir), ("the config file", config.path)])
        if output.exists() and not overwrite:
            raise InferError(f"{output} exists (use --overwrite to replace it)")
        from train.model import load_trained  # Keras starts here, once the arguments are known to be good

        options = options_from(config, preset=preset, overlap=overlap, tta=tta, tta_mode=tta_mode,
                               batch_size=batch_size, save_prob=save_prob, mode=mode, threshold=threshold,
                               min_area=min_area, fill_holes=fill_holes, exclude_border=exclude_border,
                               field_edges=field_edges, split_touching=split_touching, min_confidence=min_confidence,
                               write_labels=write_labels,
                               write_geojson=write_geojson, max_pixels=max_pixels, precision=precision, xla=xla,
                               gt_rule=gt_rule)
        model = load_trained(config, (None, None) if options.mode == "whole" else None, precision=options.precision,
                             jit_compile=options.xla)
        record = {**run_record(config, options, model_path, len(inputs)), "preset": preset,
                  "compute": model.dtype_policy.name,  # what --precision (auto included) came to on this host
                  "shard": {"index": shard[0], "of": shard[1]} if shard else None}
        bar = tqdm(total=len(inputs), unit="image", desc="infer", disable=not progress, file=sys.stderr)
        try:
            result = predict_folder(config, model, inputs, output, options, truth_of, overwrite,
                                    progress=lambda _: bar.update(1), record=record)
        finally:
            bar.close()
    except (ConfigError, InferError, TrainError) as err:
        raise click.ClickException(str(err)) from None
    except KeyboardInterrupt:
        click.echo("interrupted: nothing written", err=True)
        sys.exit(130)

    done = len(result.rows) - len(result.failures)
    click.echo(f"predicted {done} image(s) into {output}: masks, overlays/, "
               + ("labels/, " if write_labels else "") + ("geojson/, " if write_geojson else "")
               + "predictions.csv, nuclei.csv" + (", probabilities/" if save_prob else "")
               + (", scores.csv" if result.scores else ""))
    if result.pooled:
        p = result.pooled
        click.echo(f"scores over {len(result.scores)} image(s): nucleus Dice {p['nucleus_dice']:.4f} (pooled), "
                   f"{p['mean_nucleus_dice']:.4f} (mean per image); IoU {p['nucleus_iou']:.4f}; object F1 "
                   f"{p['object_f1']:.4f}; FNRo {p['fnro']:.4f}; {p['n_extra']} extra object"
                   f"{'' if p['n_extra'] == 1 else 's'}, {p['n_missed']} missed nucle"
                   f"{'us' if p['n_missed'] == 1 else 'i'}, outline Dice {p['mean_outline_dice']:.4f} (mean per image)")
    if result.failures:
        click.echo(f"error: {len(result.failures)} image(s) could not be read (predictions.csv says why): "
                   f"{', '.join(result.failures)}", err=True)
        sys.exit(1)


def options_from(config, *, overlap: float, tta: bool | None, tta_mode: str | None, batch_size: int, mode: str | None,
                 threshold: float, min_area: int | None, fill_holes: bool | None, exclude_border: bool | None,
                 split_touching: bool, min_confidence: float | None = None, save_prob: bool = False, field_edges=None,
                 write_labels: bool = True,
                 write_geojson: bool = True, max_pixels: int | None = DEFAULT_MAX_PIXELS, preset: str = "recommended",
                 precision: str | None = None, xla: bool = False, gt_rule: str | None = "auto", **_ignored):
    """InferOptions from the CLI's values, each one not given (None) taken from ``preset`` (the benches parse flags
    with ``cli.make_context`` and call this too)."""
    from infer.run import InferOptions

    given = {"mode": mode, "tta": tta, "tta_mode": tta_mode, "precision": precision, "min_area": min_area,
             "fill_holes": fill_holes, "exclude_border": exclude_border, "min_confidence": min_confidence}
    chosen = {key: preset_value(preset, key, value) for key, value in given.items()}
    m = config.model
    return InferOptions(multiple=m.downsample * 2 ** (m.num_layers - 1), overlap=overlap,
                        tta=int(chosen["tta_mode"]) if chosen["tta"] else 0, batch_size=batch_size,
                        save_prob=save_prob, mode=chosen["mode"], threshold=threshold, min_area=chosen["min_area"],
                        fill_holes=chosen["fill_holes"], exclude_border=chosen["exclude_border"],
                        field_edges=field_edges or {}, split_touching=split_touching,
                        min_confidence=chosen["min_confidence"], labels=write_labels,
                        geojson=write_geojson, max_pixels=max_pixels, precision=chosen["precision"], xla=xla,
                        gt_rule=gt_rule or "auto")


def run_record(config, options, model_path: Path | None, inputs: int) -> dict:
    """infer.json: how these outputs were made (options, the model and its weights' checksum, versions)."""
    import dataclasses

    from prep.edf import file_sha256
    from train.model import run_paths, versions

    paths = run_paths(config)
    weights = paths.trained
    return {
        "tool": "infer", "command": cli.command_line("infer"),
        "options": {**dataclasses.asdict(options), "field_edges": dict(options.field_edges)},
        "model": {"folder": str(paths.model_dir), "given_as": "--model" if model_path else "--config",
                  "config": str(config.path), "weights": str(weights), "weights_sha256": file_sha256(weights)},
        "inputs": inputs, "versions": versions(),
    }


def main() -> None:
    cli(prog_name="infer")


if __name__ == "__main__":
    main()
