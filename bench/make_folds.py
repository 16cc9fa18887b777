"""Leave-sources-out folds from a folder of reference-style tiles (``images/`` + ``masks/``).

Tiles are grouped by the source id in their name (``…_<source>_<row>x<col>.png``; augmented copies carry
the same id), and each fold holds a disjoint group of sources out: fold k's ``train/`` and ``test/`` are
ISBI-layout folders (``EDF_<tile>.png`` + ``EDF_<tile>_GT.png``) with no source on both sides.

    python bench/make_folds.py --tiles ../shared/data/edf-real/tiles --out /tmp/folds --folds 3
"""

from __future__ import annotations

import re
import shutil
from collections import defaultdict
from pathlib import Path

import click

TILE_NAME = re.compile(r"(?:.*_)?(?P<source>[^_]+)_(?P<row>\d+)x(?P<col>\d+)$")


def source_of(stem: str) -> str:
    match = TILE_NAME.match(stem)
    if match is None:
        raise ValueError(f"{stem}: not a '<source>_<row>x<col>' tile name")
    return match["source"]


def make_folds(tiles: Path, out: Path, folds: int) -> list[dict]:
    by_source: dict[str, list[Path]] = defaultdict(list)
    for image in sorted((tiles / "images").glob("*.png")):
        by_source[source_of(image.stem)].append(image)
    sources = sorted(by_source)
    if len(sources) < folds:
        raise ValueError(f"{tiles}: {len(sources)} sources cannot make {folds} folds")
    held_out = [sources[k::folds] for k in range(folds)]
    summary = []
    for k, test_sources in enumerate(held_out):
        for side, members in (("test", test_sources), ("train", [s for s in sources if s not in test_sources])):
            folder = out / f"fold{k}" / side
            folder.mkdir(parents=True, exist_ok=True)
            for source in members:
                for image in by_source[source]:
                    shutil.copyfile(image, folder / f"EDF_{image.name}")
                    shutil.copyfile(tiles / "masks" / image.name, folder / f"EDF_{image.stem}_GT.png")
        summary.append({"fold": k, "test_sources": test_sources,
                        "train_sources": [s for s in sources if s not in test_sources]})
    return summary


@click.command()
@click.option("--tiles", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option("--folds", type=click.IntRange(min=2), default=3, show_default=True)
def main(tiles: Path, out: Path, folds: int) -> None:
    for fold in make_folds(tiles, out, folds):
        click.echo(f"fold{fold['fold']}: test {' '.join(fold['test_sources'])} | "
                   f"train {' '.join(fold['train_sources'])}")


if __name__ == "__main__":
    main()
