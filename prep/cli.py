"""``prep`` command line: ``prep run`` (EDF images → tile dataset), ``prep synth`` (built-in sample data),
``prep stats`` (what a dataset holds). Never imports TensorFlow, so it starts fast."""

from __future__ import annotations

import math
import os
import sys
import warnings
from pathlib import Path

import click

from prep import __version__
from prep.atomic import output_relation
from prep.augment import NO_AUGMENTATION, AugOptions, parse_centers, parse_floats, plan
from prep.console import RecordedGroup, show_warning
from prep.edf import InputError, discover
from prep.imageio import DEFAULT_MAX_PIXELS, ImageReadError
from prep.split import SPLITS, parse_ratios, split_sources
from prep.truth import GT_RULES


class FiniteFloat(click.ParamType):
    """A float flag that refuses NaN and infinities (click's FLOAT accepts them)."""

    name = "number"

    def convert(self, value, param, ctx):
        if isinstance(value, float) and math.isfinite(value):
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


FINITE = FiniteFloat()


def _float_list(ctx, param, value: str) -> tuple[float, ...]:
    try:
        return parse_floats(value or "", f"--{param.name.replace('_', '-')}")
    except ValueError as err:
        raise click.BadParameter(str(err).split(": ", 1)[-1], ctx=ctx, param=param) from err


def _centers(ctx, param, value: str):
    try:
        centres = parse_centers(value or "")
    except ValueError as err:
        raise click.BadParameter(str(err).split(": ", 1)[-1], ctx=ctx, param=param) from err
    for cx, cy in centres:
        if not (0 <= cx <= 1 and 0 <= cy <= 1):
            raise click.BadParameter(f"centre ({cx:g},{cy:g}) lies outside 0..1", ctx=ctx, param=param)
    return centres


def _rotations(ctx, param, value: str) -> tuple[int, ...]:
    degrees = []
    for number in _float_list(ctx, param, value):
        if number != int(number) or int(number) % 90 or int(number) % 360 == 0:
            raise click.BadParameter(f"{number:g} is not one of 90, 180, 270", ctx=ctx, param=param)
        degrees.append(int(number))
    return tuple(degrees)



def main() -> None:
    cli(prog_name="prep")


@click.group(cls=RecordedGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="prep")
def cli() -> None:
    """Prepare ISBI 2014 EDF cervical cytology images as a 512×512 tile dataset for nucleus segmentation."""
    warnings.showwarning = show_warning


@cli.command("run")
@click.option("--input", "input_path", required=True, type=click.Path(path_type=Path),
              help="Folder of EDFnnn.png + EDFnnn_GT.png, or an ISBI synthetic .mat file.")
@click.option("--output", "output_path", required=True, type=click.Path(path_type=Path),
              help="Dataset folder to create (train/valid/test, manifest.csv, prep.json).")
@click.option("--masks", "masks_path", type=click.Path(path_type=Path),
              help="Folder of the GT images when not beside the images; the *_GT.mat for a .mat input, or for a "
                   "folder of numbered images 1.tif … N.tif (image k pairs with cell k of its nuclei).")
@click.option("--exclude", multiple=True, metavar="NAME",
              help="Source to leave out (e.g. EDF000); repeat or separate with commas.")
@click.option("--gt-rule", "--mask-rule", "gt_rule", type=click.Choice(GT_RULES), default="auto", show_default=True,
              help="How GT pixels become nucleus. auto: filled masks (8/16-bit, RGB) as any non-black pixel, "
                   "closed nucleus outlines (EDF000–003) filled, with a warning; auto-interior: as auto, but an "
                   "outline's own line (about a pixel outside the nucleus's edge) is left out; outline: fill every "
                   "contour; "
                   "auto-ignore-line: as auto-interior, the line written as 128 (neither class, left out of the loss); "
                   "nonzero: any non-black pixel, never filled; half: ≥128; otsu; blur-otsu (the reference's).")
@click.option("--tile-size", type=int, default=512, show_default=True, help="Tile edge in pixels.")
@click.option("--skip-empty/--keep-empty", default=True, show_default=True,
              help="Skip tiles without any nucleus pixel (as the reference).")
@click.option("--split", "split_text", default="0.8,0.15,0.05", show_default=True,
              help="Train,valid,test ratios over SOURCE images (never over tiles).")
@click.option("--augment-splits", default="train", show_default=True,
              help="Splits that get augmented copies: 'train' or 'train,valid' (test never).")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=137, show_default=True,
              help="Seed of the split and augmentations.")
@click.option("--hflip/--no-hflip", default=True, show_default=True, help="Horizontal flip.")
@click.option("--vflip/--no-vflip", default=True, show_default=True, help="Vertical flip.")
@click.option("--rotations", default="90,180,270", show_default=True, callback=_rotations,
              help="Rotations in degrees ('' for none).")
@click.option("--elastic-alpha", type=FINITE, default=1300.0, show_default=True,
              help="Elastic deformation strength α (Simard 2003).")
@click.option("--elastic-sigmas", default="8,10", show_default=True, callback=_float_list,
              help="Elastic smoothing σ values, one tile each ('' for none).")
@click.option("--distortion-sizes", default="0.02,0.03", show_default=True, callback=_float_list,
              help="Random-field distortion: largest displacement as a fraction of the width ('' for none).")
@click.option("--distortion-sigma", type=FINITE, default=40.0, show_default=True,
              help="Random-field distortion smoothing σ.")
@click.option("--barrel-radius", type=FINITE, default=0.3, show_default=True,
              help="Barrel/pincushion radius as a fraction of the width.")
@click.option("--barrel-amounts", default="0.3", show_default=True, callback=_float_list,
              help="Barrel amounts (> 0), one tile per amount and centre ('' for none).")
@click.option("--barrel-centers", default="0.3,0.3;0.7,0.3;0.5,0.5;0.3,0.7;0.7,0.7", show_default=True,
              callback=_centers, help="Barrel/pincushion centres 'x,y;x,y;…' as fractions of the tile.")
@click.option("--pincushion-amounts", default="-0.3", show_default=True, callback=_float_list,
              help="Pincushion amounts (< 0), one tile per amount and centre ('' for none).")
@click.option("--fade-factors", default="", show_default=True, callback=_float_list,
              help="Pale-nucleus copies: every nucleus's contrast to its surroundings times each factor in "
                   "(0, 1), one tile per factor ('' for none; not in the reference).")
@click.option("--no-augment", is_flag=True, help="Write original tiles only.")
@click.option("--workers", type=int, default=lambda: os.cpu_count() or 1, show_default="all cores",
              help="Processes; sources are processed in parallel.")
@click.option("--png-compression", type=click.IntRange(0, 9), default=3, show_default=True,
              help="PNG zlib level (0 fastest, 9 smallest).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Refuse an image or GT whose header declares more pixels than this (checked before decoding).")
@click.option("--mat-image-key", help="Variable holding the images in a .mat input (default: guessed).")
@click.option("--mat-mask-key", help="Variable holding the nuclei in the GT .mat (default: *Nuclei).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--progress/--no-progress", default=lambda: sys.stderr.isatty(), show_default="when stderr is a terminal",
              help="Show a progress bar.")
def run_command(input_path: Path, output_path: Path, masks_path: Path | None, exclude, gt_rule: str,
                tile_size: int, skip_empty: bool, split_text: str, augment_splits: str, seed: int,
                hflip: bool, vflip: bool, rotations, elastic_alpha: float, elastic_sigmas,
                distortion_sizes, distortion_sigma: float, barrel_radius: float, barrel_amounts,
                barrel_centers, pincushion_amounts, fade_factors, no_augment: bool, workers: int, png_compression: int,
                max_pixels: int, mat_image_key: str | None, mat_mask_key: str | None, overwrite: bool,
                progress: bool) -> None:
    """Tile EDF images (and their nucleus GT) into train/valid/test, split by source image."""
    from tqdm import tqdm

    from prep.dataset import PrepJob, TileSettings, write_dataset

    if tile_size <= 0:
        raise click.BadParameter(f"must be positive, got {tile_size}", param_hint="--tile-size")
    if workers <= 0:
        raise click.BadParameter(f"must be positive, got {workers}", param_hint="--workers")
    if barrel_radius <= 0:
        raise click.BadParameter(f"must be positive, got {barrel_radius:g}", param_hint="--barrel-radius")
    if elastic_alpha < 0:
        raise click.BadParameter(f"must not be negative, got {elastic_alpha:g}", param_hint="--elastic-alpha")
    if any(s <= 0 for s in elastic_sigmas):
        raise click.BadParameter("every σ must be positive", param_hint="--elastic-sigmas")
    if any(s < 0 for s in distortion_sizes):
        raise click.BadParameter("sizes must not be negative", param_hint="--distortion-sizes")
    if distortion_sigma <= 0:
        raise click.BadParameter(f"must be positive, got {distortion_sigma:g}", param_hint="--distortion-sigma")
    if any(a <= 0 for a in barrel_amounts):
        raise click.BadParameter("barrel amounts must be > 0 (pincushion is < 0)", param_hint="--barrel-amounts")
    if any(a >= 0 for a in pincushion_amounts):
        raise click.BadParameter("pincushion amounts must be < 0", param_hint="--pincushion-amounts")
    if any(not 0 < f < 1 for f in fade_factors):
        raise click.BadParameter("every factor must be in (0, 1)", param_hint="--fade-factors")
    try:
        ratios = parse_ratios(split_text)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--split") from err
    augmented = tuple(s.strip() for s in augment_splits.split(",") if s.strip())
    if not set(augmented) <= {"train", "valid"}:
        raise click.BadParameter(f"{augment_splits!r}: only train and valid may be augmented",
                                 param_hint="--augment-splits")
    exclusions = tuple(name.strip() for item in exclude for name in item.split(",") if name.strip())

    options = NO_AUGMENTATION if no_augment else AugOptions(
        hflip=hflip, vflip=vflip, rotations=rotations, elastic_alpha=elastic_alpha,
        elastic_sigmas=elastic_sigmas, distortion_sizes=distortion_sizes, distortion_sigma=distortion_sigma,
        barrel_radius=barrel_radius, barrel_amounts=barrel_amounts,
        barrel_centers=barrel_centers if barrel_amounts or pincushion_amounts else (),
        pincushion_amounts=pincushion_amounts, fade_factors=fade_factors,
    )
    if (barrel_amounts or pincushion_amounts) and not barrel_centers and not no_augment:
        raise click.BadParameter("no centres given for barrel/pincushion", param_hint="--barrel-centers")
    try:
        specs = tuple(plan(options))
    except ValueError as err:
        raise click.UsageError(str(err)) from err

    output_path = output_path.expanduser()
    for given in (input_path, masks_path):
        # A folder of sources: the output is neither it, nor inside it, nor around it; a file (.mat): neither it nor
        # a folder that holds it (beside it is fine).
        relation = output_relation(output_path, given) if given is not None else None
        if relation:
            kind = "folder" if given.expanduser().resolve().is_dir() else "file"
            raise click.ClickException(f"--output {output_path} {relation} the input {kind} "
                                       f"{given.expanduser().resolve()}: a dataset never goes where its sources are; "
                                       "give another --output")
    if output_path.exists() and not overwrite:
        raise click.ClickException(f"{output_path} exists (use --overwrite to replace it)")
    if output_path.exists() and not output_path.is_dir():
        raise click.ClickException(f"{output_path} exists and is not a folder")

    try:
        sources = discover(input_path.expanduser(), masks_path.expanduser() if masks_path else None,
                           exclusions, mat_image_key, mat_mask_key, gt_rule, max_pixels)
    except (InputError, ImageReadError) as err:
        raise click.ClickException(str(err)) from err

    assignment = split_sources([s.name for s in sources], ratios, seed)
    for split, ratio in zip(SPLITS, ratios, strict=True):
        names = assignment[split]
        click.echo(f"{split:>5}: {len(names):3d} source(s) {' '.join(names)}", err=True)
        if ratio > 0 and not names:
            warnings.warn(f"the {split} split is empty: {len(sources)} source(s) split {split_text} leave none for "
                          f"it (give more sources, or --split with a larger {split} share)", stacklevel=1)
    try:
        output_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise click.ClickException(f"{output_path.parent}: cannot create the folder of --output ({err})") from err
    settings = TileSettings(tile_size=tile_size, skip_empty=skip_empty, gt_rule=gt_rule, seed=seed,
                            png_compression=png_compression, augmentations=specs, augment_splits=augmented,
                            max_pixels=max_pixels)
    parameters = {
        "input": str(input_path), "masks": str(masks_path) if masks_path else None,
        "exclude": list(exclusions), "gt_rule": gt_rule, "tile_size": tile_size,
        "skip_empty": skip_empty, "split": list(ratios), "augment_splits": list(augmented), "seed": seed,
        "no_augment": no_augment, "png_compression": png_compression,
        "augmentation_options": {k: v for k, v in vars(options).items()},
    }
    job = PrepJob(sources, assignment, settings, output_path, overwrite, min(workers, len(sources)),
                  parameters, cli.command_line("prep"))

    bar = tqdm(total=len(sources), unit="source", desc="prep", disable=not progress, file=sys.stderr)

    def advance(result) -> None:
        bar.update(1)
        bar.set_postfix(source=result.source, tiles=len(result.rows), refresh=False)

    try:
        record = write_dataset(job, advance)
    except KeyboardInterrupt:
        bar.close()
        click.echo(f"interrupted: nothing written to {output_path}", err=True)
        sys.exit(130)
    except (InputError, ImageReadError, FileExistsError, ValueError, OSError) as err:
        bar.close()
        raise click.ClickException(f"{err}; nothing written to {output_path}") from err
    except MemoryError:
        bar.close()
        raise click.ClickException(f"not enough memory to tile the sources: lower --max-pixels (now {max_pixels:,}) "
                                   f"to refuse such large images up front, or --workers; nothing written to "
                                   f"{output_path}") from None
    bar.close()
    for split in SPLITS:
        counts = record["counts"][split]
        click.echo(f"{split:>5}: {counts['tiles']:5d} tiles ({counts['original_tiles']} original) "
                   f"from {counts['sources']} source(s)")
    click.echo(f"wrote {output_path}")


@cli.command("synth")
@click.option("--output", "output_path", required=True, type=click.Path(path_type=Path),
              help="Folder to create in ISBI layout (SYNnnn.png + SYNnnn_GT.png).")
@click.option("--count", type=click.IntRange(min=1), default=16, show_default=True, help="Number of images.")
@click.option("--size", type=click.IntRange(min=32), default=1024, show_default=True, help="Image edge.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=137, show_default=True,
              help="Seed of the sample: one seed, one sample.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--progress/--no-progress", default=lambda: sys.stderr.isatty(), show_default="when stderr is a terminal",
              help="Show a progress bar.")
def synth_command(output_path: Path, count: int, size: int, seed: int, overwrite: bool, progress: bool) -> None:
    """Generate a deterministic synthetic EDF-like sample (the built-in default data)."""
    from prep.atomic import atomic_output
    from prep.synth import write_sample

    if output_path.exists() and not overwrite:
        raise click.ClickException(f"{output_path} exists (use --overwrite to replace it)")
    if output_path.exists() and not output_path.is_dir():
        raise click.ClickException(f"{output_path} exists and is not a folder")
    try:
        with atomic_output(output_path, overwrite) as temp_dir:
            write_sample(temp_dir, count=count, size=size, seed=seed, progress=progress)
    except KeyboardInterrupt:
        click.echo(f"interrupted: nothing written to {output_path}", err=True)
        sys.exit(130)
    except OSError as err:
        raise click.ClickException(f"{err}; nothing written to {output_path}") from None
    click.echo(f"wrote {count} synthetic EDF image(s) of {size}×{size} to {output_path}")


@cli.command("stats")
@click.argument("dataset_argument", metavar="[DATASET]", required=False, type=click.Path(path_type=Path))
@click.option("--dataset", "dataset_option", type=click.Path(path_type=Path),
              help="The dataset folder (or give it as the argument).")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path),
              help="Bar chart PNG to write (default: DATASET/stats.png).")
def stats_command(dataset_argument: Path | None, dataset_option: Path | None, plot_path: Path | None) -> None:
    """Per split: tiles, sources, nucleus-pixel fraction, augmentation kinds; per source: its ground truth's form,
    nuclei and nucleus fraction (a misread GT stands out); a table and a PNG chart."""
    from prep.stats import dataset_stats, format_sources, format_table, plot_stats, source_stats

    if (dataset_argument is None) == (dataset_option is None):
        raise click.UsageError("give the dataset folder once: prep stats DATASET or prep stats --dataset DATASET")
    dataset = dataset_argument or dataset_option
    try:
        table = dataset_stats(dataset)
        sources = source_stats(dataset)
    except (InputError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(format_table(table))
    click.echo()
    click.echo(format_sources(sources))
    target = plot_path or dataset / "stats.png"
    plot_stats(table, target)
    click.echo(f"chart: {target}")


if __name__ == "__main__":
    main()
