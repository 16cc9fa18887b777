"""Infer settings compared on the models a bench-folds run saved: every fold's model predicts its own held-out
fields again with each variant of the infer flags, so the variants differ in nothing but those flags (no new
training, no training noise between them).

    python bench/reinfer_folds.py --runs OUT [--variant NAME='FLAGS' ...]

OUT is a `bench_folds.py --out` folder (OUT/foldK/train_eval_infer.config + models/, OUT/folds/foldK/test/).
Default variants: bench_infer.py's FIELD_VARIANTS (tiles or one whole pass; 8, 4 or no TTA views), each with
bench-real's clean-up flags. Prints one line per variant; the last line is one JSON object: per variant the mean
over folds of nucleus Dice, object F1 and FNRo, the extra and missed nuclei, and the median seconds per field.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from statistics import fmean, median

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import click  # noqa: E402

FIELD_EDGES = "field_edges.csv"


def fold_folders(runs: Path) -> list[tuple[Path, Path]]:
    """(the fold's run folder, its held-out test folder) of every fold of a bench_folds.py --out folder."""
    folds = []
    for run in sorted(runs.glob("fold[0-9]*"), key=lambda p: int(p.name[4:])):
        test = runs / "folds" / run.name / "test"
        if (run / "train_eval_infer.config").is_file() and test.is_dir():
            folds.append((run, test))
    if not folds:
        raise click.ClickException(f"{runs}: no fold runs (foldK/train_eval_infer.config with folds/foldK/test)")
    return folds


def reinfer(run: Path, test: Path, flags: list[str], output: Path) -> dict:
    """One fold's model on its test fields with ``flags``: its per-image rows and pooled scores."""
    from bench_real import DATA_KEYS, _read_rows, _run, excludes_border

    from infer.cli import cli as infer_cli

    settings = [item for key, value in DATA_KEYS.items() for item in ("--set", f"{key}={value}")]
    if excludes_border(flags) and (test / FIELD_EDGES).is_file():
        flags = [*flags, "--field-edges", str(test / FIELD_EDGES)]
    _run(infer_cli, ["--config", str(run / "train_eval_infer.config"), *settings, "--input", str(test),
                     "--gt", str(test), "--output", str(output), "--overwrite", "--no-progress", "--no-geojson",
                     "--no-labels", *flags])
    rows = _read_rows(output / "scores.csv")
    seconds = [float(row["seconds"]) for row in _read_rows(output / "predictions.csv")]
    pooled = next(row for row in rows if row["file"] == "POOLED")
    images = {row["file"]: {"nucleus_dice": round(float(row["nucleus_dice"]), 4),
                            "f1": round(float(row["object_f1"]), 4), "n_extra": int(row["n_extra"]),
                            "n_missed": int(row["n_missed"])}
              for row in rows if row["file"] != "POOLED"}
    return {"nucleus_dice": float(pooled["mean_nucleus_dice"]), "f1": float(pooled["object_f1"]),
            "fnro": float(pooled["fnro"]), "n_extra": int(pooled["n_extra"]), "n_missed": int(pooled["n_missed"]),
            "seconds": seconds, "images": images}


def compare(runs: Path, variants: dict[str, str], echo=click.echo) -> dict:
    folds = fold_folders(runs)
    results = {}
    for name, flags in variants.items():
        per_fold = [reinfer(run, test, shlex.split(flags), runs / run.name / f"reinfer-{name}") for run, test in folds]
        results[name] = {
            "flags": flags,
            "nucleus_dice": round(fmean(f["nucleus_dice"] for f in per_fold), 4),
            "f1": round(fmean(f["f1"] for f in per_fold), 4),
            "fnro": round(fmean(f["fnro"] for f in per_fold), 4),
            "n_extra": sum(f["n_extra"] for f in per_fold), "n_missed": sum(f["n_missed"] for f in per_fold),
            "seconds_per_field": round(median(s for f in per_fold for s in f["seconds"]), 3),
            "folds": [round(f["nucleus_dice"], 4) for f in per_fold],
            "images": {name: row for f in per_fold for name, row in f["images"].items()},  # each held-out field
        }
        r = results[name]
        echo(f"{name}: nucleus Dice {r['nucleus_dice']:.4f}, object F1 {r['f1']:.4f}, FNRo {r['fnro']:.4f}, "
             f"{r['n_extra']} extra, {r['n_missed']} missed, {r['seconds_per_field']:.2f} s per field")
    return results


def default_variants() -> dict[str, str]:
    from bench_infer import FIELD_VARIANTS, POST_FLAGS

    return {name: f"{flags} {POST_FLAGS}".strip() for name, flags in FIELD_VARIANTS.items()}


def _variant(_ctx, _param, values) -> dict[str, str]:
    variants = {}
    for value in values:
        name, sep, flags = value.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"{value!r}: expected NAME=FLAGS", param_hint="--variant")
        variants[name.strip()] = flags
    return variants


@click.command()
@click.option("--runs", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A bench_folds.py --out folder.")
@click.option("--variant", "variants", multiple=True, callback=_variant,
              help="NAME=FLAGS for infer (repeat); default: tiles/whole × 8/4/no TTA views, with bench-real's "
                   "clean-up flags.")
def main(runs: Path, variants: dict[str, str]) -> None:
    """Each fold's saved model on its own held-out fields, once per variant of the infer flags."""
    click.echo(json.dumps(compare(runs, variants or default_variants())))


if __name__ == "__main__":
    main()
