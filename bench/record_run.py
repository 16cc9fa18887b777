"""Put a finished whole-field bench-folds run on record: one row of bench/results/fields_runs.csv and its JSON beside.

    python bench/record_run.py --summary OUT/summary.json --variant "default" --code 1a2b3c4 [--date 2026-12-01]

The row holds each field's nucleus Dice, the run's means (nucleus Dice over folds, object F1, FNRo), the worst
field, the extra and missed nuclei, the longest fold's training seconds, the mean infer seconds per field and the
fewest epochs a fold trained (a wall-clock budget on a slower host buys fewer: compare runs with that in mind).
One bench-real run over whole test fields (the synthetic-only model's) goes on record the same way.
`loso_runs.py --runs bench/results/fields_runs.csv` sums the rows up per variant. A run is never recorded twice.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import json
import re
from pathlib import Path

import click

RESULTS = Path(__file__).resolve().parent / "results"
RECORD = RESULTS / "fields_runs.csv"
META = ("date", "code", "variant")
MEANS = ("nucleus_dice", "f1", "fnro", "field_dice_min", "n_extra", "n_missed", "train_seconds_max",
         "infer_seconds_per_image", "epochs_min")


def record_row(summary: dict, variant: str, code: str, date: str) -> dict:
    """The record's row for a bench_folds summary of whole fields (its ``images`` are the fields), or for one
    bench_real run whose test images are whole fields (``per_image``: e.g. the synthetic-only model, which saw no
    real field and so is scored on all of them at once)."""
    images = summary.get("images") or summary.get("per_image")
    if not images:
        raise ValueError("the summary has no per-field scores ('images' or 'per_image'): is it a whole-field run?")
    fields = {Path(name).stem: scores["nucleus_dice"] for name, scores in sorted(images.items())}
    folds = summary.get("folds") or []
    single = {"field_dice_min": min(fields.values()), "train_seconds_max": summary.get("train_seconds"),
              # a summary from before bench-folds kept the range: its folds still say how many epochs each had
              "epochs_min": (min(fold["epochs"] for fold in folds) if folds and all("epochs" in f for f in folds)
                             else summary.get("epochs"))}
    means = {key: summary.get(key, single.get(key)) for key in MEANS}
    return {"date": date, "code": code, "variant": variant, **fields,
            **{key: value for key, value in means.items() if value is not None}}


SLUG_CHARS = 100  # a file name stays far under the 255 bytes file systems allow, whatever the variant says


def variant_slug(variant: str) -> str:
    """The variant as a file-name part: lower-case words joined by '-', a long one cut at a word and told apart
    from others that start alike by a hash of the whole text."""
    slug = re.sub(r"[^a-z0-9]+", "-", variant.lower()).strip("-")
    if len(slug) <= SLUG_CHARS:
        return slug
    cut = slug[:SLUG_CHARS].rsplit("-", 1)[0]
    return f"{cut}-{hashlib.sha1(variant.encode()).hexdigest()[:8]}"


def append(row: dict, summary: dict, record: Path = RECORD) -> Path:
    """Append ``row`` (a new field column is refused: the record's columns are its first run's) and write the JSON."""
    rows = []
    if record.is_file():
        with record.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    columns = list(rows[0]) if rows else list(row)
    if rows and set(row) - set(columns):
        raise ValueError(f"{record}: no column for {', '.join(sorted(set(row) - set(columns)))}")
    if any(old["code"] == row["code"] and old["variant"] == row["variant"] and old["date"] == row["date"]
           for old in rows):
        raise ValueError(f"{record}: {row['date']} {row['code']} {row['variant']!r} is on record already")
    target = record.parent / f"fields_{row['date']}_{row['code']}_{variant_slug(row['variant'])}.json"
    target.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    with record.open("a" if rows else "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        if not rows:
            writer.writeheader()
        writer.writerow({key: row.get(key, "") for key in columns})
    return target


@click.command()
@click.option("--summary", "summary_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--variant", required=True, help="What was run, e.g. 'default' or 'default, no pale copies'.")
@click.option("--code", required=True, help="The commit the run's fresh clone was at.")
@click.option("--date", default=lambda: datetime.date.today().isoformat(), show_default="today")
@click.option("--record", type=click.Path(dir_okay=False, path_type=Path), default=RECORD, show_default=True)
def main(summary_path: Path, variant: str, code: str, date: str, record: Path) -> None:
    """Append a whole-field run to the record."""
    summary = json.loads(summary_path.read_text())
    try:
        target = append(record_row(summary, variant, code, date), summary, record)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"recorded in {record} and {target}")


if __name__ == "__main__":
    main()
