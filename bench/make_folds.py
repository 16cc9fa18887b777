"""Leave-sources-out folds: of whole ISBI-layout fields (``make_field_folds``, the default set), or of a folder of
reference-style tiles (``images/`` + ``masks/``, ``make_folds``).

Whole fields (``EDFnnn.png`` + ``EDFnnn_GT.png``, ground truth as published): fold k holds out every K-th field
in name order (10 fields, 5 folds: EDF000+EDF005, EDF001+EDF009, …); its ``train/`` holds the other fields, its
``test/`` the held-out ones, each as the same ISBI pair. No field is ever on both sides.

Tiles are grouped by the source id in their name (``…_<source>_<row>x<col>.png``; augmented copies carry
the same id), and each fold holds a disjoint group of sources out: fold k's ``train/`` and ``test/`` are
ISBI-layout folders (``EDF_<tile>.png`` + ``EDF_<tile>_GT.png``) with no source on both sides.

Each ``test/`` also gets ``field_edges.csv`` (for ``infer --exclude-border --field-edges``): which edges of each
tile are edges of its source field, from the tile's row and column in a ``--field-grid``² grid (ISBI 2014's
1024² fields cut into 512² tiles: 2). The ground truth leaves the nuclei cut by the field's edge unannotated
but annotates those cut by a tile's inner edges.

    python bench/make_folds.py --fields ../shared/data/isbi2014/EDF --out /tmp/folds --folds 5
    python bench/make_folds.py --tiles ../shared/data/edf-real/tiles --out /tmp/folds --folds 3
"""

from __future__ import annotations

import csv
import re
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import click

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from prep.atomic import atomic_output  # noqa: E402
from prep.edf import InputError, discover_png_pairs  # noqa: E402

TILE_NAME = re.compile(r"(?:.*_)?(?P<source>[^_]+)_(?P<row>\d+)x(?P<col>\d+)$")


def parse_tile_name(stem: str) -> re.Match:
    match = TILE_NAME.match(stem)
    if match is None:
        raise ValueError(f"{stem}: not a '<source>_<row>x<col>' tile name")
    return match


def source_of(stem: str) -> str:
    return parse_tile_name(stem)["source"]


def field_edges_of(stem: str, grid: int) -> tuple[str, ...]:
    """The edges of tile ``<source>_<row>x<col>`` that lie on its source field's edge, in a grid×grid field."""
    match = parse_tile_name(stem)
    row, col = int(match["row"]), int(match["col"])
    if row >= grid or col >= grid:
        raise ValueError(f"{stem}: row {row}, column {col} lie outside a {grid}×{grid} field (--field-grid)")
    edges = {"top": row == 0, "bottom": row == grid - 1, "left": col == 0, "right": col == grid - 1}
    return tuple(edge for edge, on_field_edge in edges.items() if on_field_edge)


def make_folds(tiles: Path, out: Path, folds: int, field_grid: int = 2, overwrite: bool = False) -> list[dict]:
    """Write the folds into ``out`` atomically (built beside it, then renamed into place): an empty or missing
    ``out`` is filled, one with files in it is replaced only with ``overwrite``; a failure leaves nothing behind."""
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty (use --overwrite to replace it)")
    by_source: dict[str, list[Path]] = defaultdict(list)
    for image in sorted((tiles / "images").glob("*.png")):
        if not (tiles / "masks" / image.name).is_file():
            raise ValueError(f"{image}: no mask {tiles / 'masks' / image.name}")
        by_source[source_of(image.stem)].append(image)
    sources = sorted(by_source)
    if len(sources) < folds:
        raise ValueError(f"{tiles}: {len(sources)} sources cannot make {folds} folds")
    edges = {image.name: field_edges_of(image.stem, field_grid) for images in by_source.values() for image in images}
    held_out = [sources[k::folds] for k in range(folds)]
    summary = []
    # out is missing, empty, or overwrite was asked for (checked above)
    with atomic_output(out, overwrite=True) as temp:
        for k, test_sources in enumerate(held_out):
            for side, members in (("test", test_sources), ("train", [s for s in sources if s not in test_sources])):
                folder = temp / f"fold{k}" / side
                folder.mkdir(parents=True)
                for source in members:
                    for image in by_source[source]:
                        shutil.copyfile(image, folder / f"EDF_{image.name}")
                        shutil.copyfile(tiles / "masks" / image.name, folder / f"EDF_{image.stem}_GT.png")
            with (temp / f"fold{k}" / "test" / "field_edges.csv").open("w", newline="") as handle:
                writer = csv.writer(handle, lineterminator="\n")
                writer.writerow(["file", "field_edges"])
                writer.writerows([f"EDF_{image.name}", " ".join(edges[image.name])]
                                 for source in test_sources for image in by_source[source])
            summary.append({"fold": k, "test_sources": test_sources,
                            "train_sources": [s for s in sources if s not in test_sources]})
    return summary


def field_fold_plan(names: list[str], folds: int) -> list[dict]:
    """Folds of whole fields: fold k holds out every ``folds``-th field from the k-th in name order, trains on the
    rest (with 10 fields and 5 folds: EDF000 and EDF005 in fold 0, …). No field is on both sides of a fold."""
    names = sorted(names)
    if len(names) < folds:
        raise ValueError(f"{len(names)} fields cannot make {folds} folds")
    return [{"fold": k, "test_sources": names[k::folds],
             "train_sources": [name for name in names if name not in names[k::folds]]} for k in range(folds)]


def make_field_folds(fields: Path, out: Path, folds: int, overwrite: bool = False) -> list[dict]:
    """Folds of whole fields (ISBI pairs in ``fields``), written into ``out`` atomically as make_folds does."""
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty (use --overwrite to replace it)")
    try:
        refs = discover_png_pairs(fields)
    except InputError as err:
        raise ValueError(str(err)) from None
    try:
        plan = field_fold_plan([ref.name for ref in refs], folds)
    except ValueError as err:
        raise ValueError(f"{fields}: {err}") from None
    by_name = {ref.name: ref for ref in refs}
    # out is missing, empty, or overwrite was asked for (checked above)
    with atomic_output(out, overwrite=True) as temp:
        for fold in plan:
            for side in ("test", "train"):
                folder = temp / f"fold{fold['fold']}" / side
                folder.mkdir(parents=True)
                for name in fold[f"{side}_sources"]:
                    shutil.copyfile(by_name[name].image_path, folder / f"{name}.png")
                    shutil.copyfile(by_name[name].mask_path, folder / f"{name}_GT.png")
    return plan


@click.command()
@click.option("--fields", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="ISBI-layout whole fields (EDFnnn.png + EDFnnn_GT.png): folds by field.")
@click.option("--tiles", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Reference-style tiles (images/ + masks/): folds by the source in the tile names.")
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option("--folds", type=click.IntRange(min=2), default=3, show_default=True)
@click.option("--field-grid", type=click.IntRange(min=1), default=2, show_default=True,
              help="With --tiles: tiles per side of a source field (field_edges.csv).")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out folder.")
def main(fields: Path | None, tiles: Path | None, out: Path, folds: int, field_grid: int, overwrite: bool) -> None:
    if (fields is None) == (tiles is None):
        raise click.UsageError("give one of --fields and --tiles")
    try:
        if fields is not None:
            summary = make_field_folds(fields, out, folds, overwrite)
        else:
            summary = make_folds(tiles, out, folds, field_grid, overwrite)
    except (ValueError, FileExistsError) as err:
        raise click.ClickException(str(err)) from None
    for fold in summary:
        click.echo(f"fold{fold['fold']}: test {' '.join(fold['test_sources'])} | "
                   f"train {' '.join(fold['train_sources'])}")


if __name__ == "__main__":
    main()
