"""Write the tile dataset (the contract of docs/design.md §3) atomically.

Sources are split first, then each source is tiled and, in the augmented splits, augmented, one source
per task so ``--workers`` processes share the work. Every random draw comes from a generator seeded by
(seed, tile name, augmentation), so the bytes written do not depend on the number of workers or on
the order in which tasks finish. Everything goes to a temporary folder beside OUT that is renamed into
place at the end; an interrupted or failed run leaves nothing behind.
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import signal
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from prep import __version__
from prep.atomic import atomic_output
from prep.augment import RANDOM_KINDS, AugSpec, apply
from prep.edf import SourceRef, load_source_truth, sha256
from prep.imageio import DEFAULT_MAX_PIXELS, NUCLEUS_LEVEL, encode_png, mask_to_rgb
from prep.split import SPLITS, check_disjoint
from prep.tiling import crop, grid, pad_to_grid, tile_name

MANIFEST_COLUMNS = ("split", "file", "source", "row", "col", "y", "x", "augmentation", "params",
                    "nucleus_fraction")


@dataclass(frozen=True)
class TileSettings:
    tile_size: int = 512
    skip_empty: bool = True
    gt_rule: str = "auto"  # prep.truth.GT_RULES
    seed: int = 137
    png_compression: int = 3
    augmentations: tuple[AugSpec, ...] = ()
    augment_splits: tuple[str, ...] = ("train",)
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # refused before decoding (prep.imageio.check_pixels)


@dataclass
class SourceResult:
    source: str
    split: str
    height: int
    width: int
    rows: list[dict] = field(default_factory=list)
    skipped_empty: int = 0


def tile_rng(seed: int, name: str, spec: AugSpec) -> np.random.Generator:
    """A generator that depends only on (seed, tile, augmentation), never on scheduling."""
    entropy = [seed, zlib.crc32(name.encode()), zlib.crc32(spec.prefix.encode())]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def tiles_of_source(image: np.ndarray, levels: np.ndarray, source: str, split: str,
                    settings: TileSettings) -> Iterator[tuple[dict, np.ndarray, np.ndarray]]:
    """Yield (manifest row, RGB tile, mask tile) for one source: originals, then augmentations. ``levels`` and the
    mask tiles are uint8 in the tile masks' levels (``Truth.levels``: 0, NUCLEUS_LEVEL and maybe IGNORE_LEVEL)."""
    size = settings.tile_size
    padded_image = pad_to_grid(image, size)
    padded_mask = pad_to_grid(levels, size)
    specs = settings.augmentations if split in settings.augment_splits else ()
    for tile in grid(*levels.shape, size):
        base = tile_name(source, tile)
        tile_image = np.ascontiguousarray(crop(padded_image, tile, size))
        tile_mask = np.ascontiguousarray(crop(padded_mask, tile, size))
        position = {"split": split, "source": source, "row": tile.row, "col": tile.col,
                    "y": tile.y, "x": tile.x}
        if settings.skip_empty and not (tile_mask == NUCLEUS_LEVEL).any():
            yield {**position, "file": None}, tile_image, tile_mask
            continue
        yield {**position, "file": f"{base}.png", "augmentation": "none", "params": "{}"}, tile_image, tile_mask
        for spec in specs:
            rng = tile_rng(settings.seed, base, spec) if spec.kind in RANDOM_KINDS else None
            aug_image, aug_mask = apply(spec, tile_image, tile_mask, rng)
            row = {**position, "file": f"{spec.prefix}_{base}.png", "augmentation": spec.kind,
                   "params": json.dumps(spec.params, sort_keys=True)}
            if settings.skip_empty and not (aug_mask == NUCLEUS_LEVEL).any():
                row["file"] = None  # the distortion pushed every nucleus out of the tile
            yield row, aug_image, aug_mask


def process_source(ref: SourceRef, split: str, out_dir: Path, settings: TileSettings) -> SourceResult:
    """Tile (and augment) one source into ``out_dir/<split>/{images,masks}``."""
    image, truth = load_source_truth(ref, settings.gt_rule, settings.max_pixels)
    result = SourceResult(ref.name, split, *truth.mask.shape)
    images_dir = out_dir / split / "images"
    masks_dir = out_dir / split / "masks"
    for row, tile_image, tile_mask in tiles_of_source(image, truth.levels(), ref.name, split, settings):
        if row["file"] is None:
            result.skipped_empty += 1
            continue
        (images_dir / row["file"]).write_bytes(encode_png(tile_image, settings.png_compression))
        (masks_dir / row["file"]).write_bytes(encode_png(mask_to_rgb(tile_mask), settings.png_compression))
        row["nucleus_fraction"] = f"{np.count_nonzero(tile_mask == NUCLEUS_LEVEL) / tile_mask.size:.6f}"
        result.rows.append(row)
    return result


def _process_task(task: tuple[SourceRef, str, Path, TileSettings]) -> SourceResult:
    return process_source(*task)


def _worker_init() -> None:
    # The parent handles Ctrl-C and cleans up; workers must not print tracebacks of their own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import cv2

    cv2.setNumThreads(1)  # one source per process is the parallelism; avoid oversubscription


def run_tasks(tasks: Sequence[tuple], workers: int,
              on_result: Callable[[SourceResult], None]) -> list[SourceResult]:
    """Process tasks with ``workers`` processes; results come back in task order."""
    results = []
    if workers <= 1 or len(tasks) <= 1:
        import cv2

        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            for task in tasks:
                results.append(_process_task(task))
                on_result(results[-1])
        finally:
            cv2.setNumThreads(threads)
        return results
    # Never plain fork: OpenCV's thread pool (started by any earlier cv2 call in this process) does not
    # survive a fork and the child deadlocks. A fork server starts children from a clean process.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    pool = context.Pool(min(workers, len(tasks)), initializer=_worker_init)
    try:
        for result in pool.imap(_process_task, tasks, chunksize=1):
            results.append(result)
            on_result(result)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
    return results


def manifest_text(results: Sequence[SourceResult]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    order = {name: i for i, name in enumerate(SPLITS)}
    for result in sorted(results, key=lambda r: (order[r.split], r.source)):
        for row in result.rows:
            writer.writerow({k: row[k] for k in MANIFEST_COLUMNS})
    return buffer.getvalue()


def summary(results: Sequence[SourceResult], assignment: dict[str, list[str]]) -> dict:
    counts = {}
    for split in SPLITS:
        mine = [r for r in results if r.split == split]
        kinds = Counter(row["augmentation"] for r in mine for row in r.rows)
        counts[split] = {
            "sources": len(assignment.get(split, [])),
            "tiles": sum(len(r.rows) for r in mine),
            "original_tiles": kinds.get("none", 0),
            "skipped_empty": sum(r.skipped_empty for r in mine),
            "augmentations": dict(sorted(kinds.items())),
        }
    return counts


@dataclass
class PrepJob:
    sources: list[SourceRef]
    assignment: dict[str, list[str]]
    settings: TileSettings
    out_dir: Path
    overwrite: bool = False
    workers: int = 1
    parameters: dict = field(default_factory=dict)
    command: str = ""


def write_dataset(job: PrepJob, progress: Callable[[SourceResult], None] | None = None) -> dict:
    """Tile every source into a temp folder, write manifest.csv and prep.json, then publish to OUT."""
    check_disjoint(job.assignment)
    split_of = {name: split for split, names in job.assignment.items() for name in names}
    missing = [ref.name for ref in job.sources if ref.name not in split_of]
    if missing:
        raise ValueError(f"sources without a split: {', '.join(missing)}")
    with atomic_output(job.out_dir, job.overwrite) as temp_dir:
        for split in SPLITS:
            for kind in ("images", "masks"):
                (temp_dir / split / kind).mkdir(parents=True)
        tasks = [(ref, split_of[ref.name], temp_dir, job.settings) for ref in job.sources]
        results = run_tasks(tasks, job.workers, progress or (lambda _: None))
        (temp_dir / "manifest.csv").write_text(manifest_text(results))
        by_name = {r.source: r for r in results}
        record = {
            "tool": "prep",
            "version": __version__,
            "parameters": job.parameters,
            "seed": job.settings.seed,
            "settings": {**asdict(job.settings), "augmentations": [asdict(s) for s in job.settings.augmentations]},
            "splits": job.assignment,
            "counts": summary(results, job.assignment),
            "inputs": [
                {
                    "source": ref.name,
                    "split": split_of[ref.name],
                    # Absolute (links kept as named), so `infer --dataset` finds the sources from any folder.
                    "image": os.path.abspath(ref.image_path),
                    "mask": os.path.abspath(ref.mask_path),
                    "index": ref.index,
                    "image_sha256": sha256(ref.image_path),
                    "mask_sha256": sha256(ref.mask_path),
                    "height": by_name[ref.name].height,
                    "width": by_name[ref.name].width,
                    "gt_form": ref.gt_form,
                    "nuclei": ref.nuclei,
                    "nucleus_fraction": None if ref.nucleus_fraction is None else round(ref.nucleus_fraction, 6),
                    "tiles": len(by_name[ref.name].rows),
                }
                for ref in job.sources
            ],
            # Only this block may differ between runs with the same inputs and flags.
            "run": {"command": job.command, "workers": job.workers, "output": str(job.out_dir)},
        }
        (temp_dir / "prep.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
