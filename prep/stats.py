"""What a prepared dataset holds: per split (from manifest.csv) and per source (from prep.json), so a wrong
reading of the ground truth (outlines read as rings: a fifth of the nucleus pixels) stands out."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

from prep.edf import InputError
from prep.split import SPLITS


def dataset_stats(dataset: Path) -> dict[str, dict]:
    manifest = dataset / "manifest.csv"
    if not manifest.is_file():
        raise InputError(f"{manifest}: no manifest (is {dataset} a folder written by 'prep run'?)")
    table = {split: {"tiles": 0, "sources": set(), "nucleus": 0.0, "kinds": Counter()} for split in SPLITS}
    with manifest.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"split", "source", "augmentation", "nucleus_fraction"} - set(reader.fieldnames or ())
        if missing:
            raise InputError(f"{manifest}: missing columns {', '.join(sorted(missing))}")
        for line, row in enumerate(reader, start=2):
            if row["split"] not in table:
                raise InputError(f"{manifest}:{line}: unknown split {row['split']!r}")
            entry = table[row["split"]]
            entry["tiles"] += 1
            entry["sources"].add(row["source"])
            entry["nucleus"] += float(row["nucleus_fraction"])
            entry["kinds"][row["augmentation"]] += 1
    return {
        split: {
            "tiles": entry["tiles"],
            "sources": len(entry["sources"]),
            "nucleus_fraction": entry["nucleus"] / entry["tiles"] if entry["tiles"] else 0.0,
            "augmentations": dict(sorted(entry["kinds"].items())),
        }
        for split, entry in table.items()
    }


def source_stats(dataset: Path) -> list[dict]:
    """One row per source of prep.json: split, size, ground-truth form, nuclei, nucleus fraction, tiles (None
    where a dataset written by an older prep did not record it)."""
    record_path = dataset / "prep.json"
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{record_path}: cannot read the dataset record ({err})") from None
    return [{key: entry.get(key) for key in ("source", "split", "height", "width", "gt_form", "nuclei",
                                             "nucleus_fraction", "tiles")}
            for entry in record.get("inputs", [])]


def _aligned(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)) for line in [header, *rows]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def format_table(table: dict[str, dict]) -> str:
    kinds = sorted({kind for entry in table.values() for kind in entry["augmentations"]})
    header = ["split", "tiles", "sources", "nucleus %", *kinds]
    rows = [
        [split, str(e["tiles"]), str(e["sources"]), f"{100 * e['nucleus_fraction']:.2f}",
         *(str(e["augmentations"].get(kind, 0)) for kind in kinds)]
        for split, e in table.items()
    ]
    return _aligned(header, rows)


def format_sources(rows: list[dict]) -> str:
    """The per-source table; '?' where the dataset did not record a value."""
    def shown(value, text=str):
        return "?" if value is None else text(value)

    header = ["source", "split", "size", "GT", "nuclei", "nucleus %", "tiles"]
    body = [[row["source"], row["split"], f"{shown(row['width'])}×{shown(row['height'])}", shown(row["gt_form"]),
             shown(row["nuclei"]), shown(row["nucleus_fraction"], lambda v: f"{100 * v:.2f}"), shown(row["tiles"])]
            for row in rows]
    return _aligned(header, body)


def plot_stats(table: dict[str, dict], target: Path):
    """Stacked bars of tiles per augmentation kind for each split (a log axis when the splits differ by more than
    20×, so a small test split stays visible; un-augmented tiles are "original"), and the nucleus-pixel
    fraction. Returns the tiles axis' legend labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(table)
    kinds = sorted({kind for entry in table.values() for kind in entry["augmentations"]})
    figure, (tiles_axis, fraction_axis) = plt.subplots(1, 2, figsize=(10, 4), width_ratios=(2, 1))
    bottom = [0] * len(splits)
    for kind in kinds:
        heights = [table[s]["augmentations"].get(kind, 0) for s in splits]
        tiles_axis.bar(splits, heights, bottom=bottom, label="original" if kind == "none" else kind)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    for x, split in enumerate(splits):
        tiles_axis.annotate(f"{table[split]['tiles']} tiles\n{table[split]['sources']} sources",
                            (x, bottom[x]), ha="center", va="bottom", fontsize=8)
    tiles_axis.set_ylabel("tiles")
    totals = [t for t in bottom if t > 0]
    if totals and max(totals) > 20 * min(totals):
        tiles_axis.set_yscale("log")
        tiles_axis.set_ylabel("tiles (log scale)")
    tiles_axis.set_title("tiles per split and augmentation")
    labels = []
    if kinds:
        legend = tiles_axis.legend(fontsize=7, loc="upper right")
        labels = [text.get_text() for text in legend.get_texts()]
    tiles_axis.margins(y=0.2)
    fraction_axis.bar(splits, [100 * table[s]["nucleus_fraction"] for s in splits], color="#a33")
    fraction_axis.set_ylabel("nucleus pixels (%)")
    fraction_axis.set_title("mean nucleus fraction per tile")
    figure.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=100, metadata={"Software": None})
    plt.close(figure)
    return labels
