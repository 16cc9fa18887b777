"""bench-real over every leave-sources-out fold of a tile folder, reported per fold and as one mean.

    python bench/bench_folds.py --tiles ../shared/data/edf-real/tiles [--folds 6] [--out DIR] [--set k=v ...]

Makes the folds (`make_folds.py`: tiles grouped by the source id in their name, each fold holds a disjoint
group of sources out), runs `bench_real` on each in turn (its ≤ 15-minute CPU training included, so 6 folds
take about 1.5 hours), prints one line per fold as it finishes, and as its last line one JSON object:
`nucleus_dice` etc. are means over the folds (each fold weighs the same, however many tiles its sources
have), `nucleus_dice_images` the mean over every held-out image, and `folds` holds each fold's summary.
With --out, `summary.json` there holds that object and `overlays.png` shows every held-out image (ground truth
green, prediction red) with its fold and Dice: red alone is an extra object, green alone a missed nucleus.
The default --folds 6 on the reference's 6 sources is leave-one-source-out: every model trains on all
sources but the one it is scored on.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from statistics import fmean

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import click  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from bench_real import DEFAULT_PREP_FLAGS, VALID_ON, bench_real, run_options  # noqa: E402
from make_folds import make_folds  # noqa: E402

FOLD_MEANS = ("nucleus_dice", "nucleus_iou", "object_dice", "fnro", "f1", "outline_dice")


def combine(folds: list[dict]) -> dict:
    """Means over folds of each fold's summary, the mean over all held-out images, and the folds themselves."""
    if not folds:
        raise ValueError("no folds to combine")
    per_image = [dice for fold in folds for dice in fold["per_image_dice"].values()]
    combined = {key: round(fmean(fold[key] for fold in folds), 4) for key in FOLD_MEANS}
    combined.update({
        "nucleus_dice_min": min(fold["nucleus_dice"] for fold in folds),
        "nucleus_dice_images": round(fmean(per_image), 4),
        "test_images": len(per_image),
        "n_extra": sum(fold["n_extra"] for fold in folds),
        "n_missed": sum(fold["n_missed"] for fold in folds),
        "train_seconds": round(sum(fold["train_seconds"] for fold in folds), 1),
        "folds": folds,
    })
    return combined


def fold_line(fold: dict) -> str:
    images = f"{fold['test_images']} image{'' if fold['test_images'] == 1 else 's'}"
    return (f"fold{fold['fold']} (test {' '.join(fold['test_sources'])}; {images}): "
            f"nucleus Dice {fold['nucleus_dice']:.4f} (outlines alone {fold['outline_dice']:.4f}: "
            f"{fold['n_extra']} extra, {fold['n_missed']} missed), FNRo {fold['fnro']:.4f}, "
            f"{fold['epochs']} epochs in {fold['train_seconds']:.0f} s")


def montage(panels: list[tuple[str, np.ndarray]], columns: int = 4, size: int = 320) -> np.ndarray:
    """The images (HxWx3 uint8), each scaled to ``size`` px wide with its caption above it, in rows of ``columns``."""
    if not panels:
        raise ValueError("no images for the montage")
    caption_height = 22
    cells = []
    for caption, image in panels:
        height = round(image.shape[0] * size / image.shape[1])
        cell = np.full((caption_height + height, size, 3), 255, np.uint8)
        cell[caption_height:] = cv2.resize(image, (size, height), interpolation=cv2.INTER_AREA)
        cv2.putText(cell, caption, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        cells.append(cell)
    cell_height = max(cell.shape[0] for cell in cells)
    cells += [np.full((cell_height, size, 3), 255, np.uint8)] * (-len(cells) % columns)
    padded = [np.pad(cell, ((0, cell_height - cell.shape[0]), (0, 0), (0, 0)), constant_values=255) for cell in cells]
    rows = [np.hstack(padded[start:start + columns]) for start in range(0, len(padded), columns)]
    return np.vstack(rows)


def overlay_panels(out: Path, folds: list[dict]) -> list[tuple[str, np.ndarray]]:
    panels = []
    for fold in folds:
        for name, dice in fold["per_image_dice"].items():
            image = cv2.imread(str(out / f"fold{fold['fold']}" / "infer" / "overlays" / f"{Path(name).stem}.png"))
            if image is not None:
                stem = Path(name).stem.removeprefix("EDF_")
                short = stem if len(stem) <= 30 else f"{stem[:9]}..{stem[-19:]}"  # keep the kind and the source
                panels.append((f"fold{fold['fold']} {short} {dice:.3f}", image))
    return panels


def bench_folds(tiles: Path, out: Path, folds: int, config: Path, overrides: list[str], infer_flags: list[str],
                synth: int, valid_on: str = VALID_ON[0], echo=click.echo,
                prep_flags: Sequence[str] = DEFAULT_PREP_FLAGS) -> dict:
    summaries = []
    for fold in make_folds(tiles, out / "folds", folds):
        fold_dir = out / "folds" / f"fold{fold['fold']}"
        summary = bench_real(fold_dir / "train", fold_dir / "test", out / f"fold{fold['fold']}", config,
                             overrides, infer_flags, synth=synth, valid_on=valid_on, prep_flags=prep_flags)
        summaries.append({**fold, **summary})
        echo(fold_line(summaries[-1]))
    panels = overlay_panels(out, summaries)
    if panels:
        cv2.imwrite(str(out / "overlays.png"), montage(panels))
    combined = combine(summaries)
    # The printed JSON, kept beside the folds: a run is worth a row in bench/results/loso_runs.csv.
    partial = out / "summary.json.partial"
    partial.write_text(json.dumps(combined, indent=1) + "\n")
    partial.replace(out / "summary.json")
    return combined


@click.command()
@click.option("--tiles", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Reference-style tiles: images/ and masks/ named <source>_<row>x<col>.png.")
@click.option("--folds", type=click.IntRange(min=2), default=6, show_default=True,
              help="Number of folds (the number of sources: leave-one-source-out).")
@click.option("--out", type=click.Path(path_type=Path), help="Keep every fold's run here (default: a temp folder).")
@run_options  # bench-real's own options, applied to every fold
def main(tiles: Path, folds: int, out: Path | None, config: Path, overrides, infer_flags: str, synth: int,
         valid_on: str, prep_flags: list[str]) -> None:
    """Cross-validate bench-real over leave-sources-out folds of TILES."""
    if out is not None and out.exists() and any(out.iterdir()):
        raise click.BadParameter(f"{out} is not empty; give a new folder", param_hint="--out")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-folds-") as scratch:
            summary = bench_folds(tiles, out or Path(scratch), folds, config, list(overrides), infer_flags.split(),
                                  synth, valid_on, prep_flags=prep_flags)
    except ValueError as err:  # e.g. fewer sources than folds, or a tile name without a source id
        raise click.ClickException(str(err)) from None
    click.echo(json.dumps(summary))


if __name__ == "__main__":
    main()
