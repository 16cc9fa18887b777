"""Merge the outputs of ``infer --shard K/N`` jobs into one folder, as if one run had predicted every input:
per-image files moved side by side, predictions.csv and nuclei.csv joined in the single run's input order,
scores.csv re-pooled from the per-image rows, infer.json listing each shard's record. Shards of other models,
options or compute precision are refused. Pooled counts and the scores made of them (nucleus Dice, object F1)
equal the single run's; means over images are taken from the per-image rows as written (6 significant digits).

    python -m infer.merge --output OUT SHARD_DIR [SHARD_DIR …]
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import click

from prep.atomic import atomic_output

TABLES = ("predictions.csv", "nuclei.csv")
POOLED_ROW = "POOLED"


def _rows(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or ()), list(reader)


def _write(path: Path, columns: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _number(text: str) -> float | int:
    try:
        return int(text)
    except ValueError:
        return float(text)


def check_shards(shards: list[Path]) -> list[dict]:
    """Each shard's infer.json, checked: every shard of one N, each K once, all of them given."""
    records = []
    for shard in shards:
        record_path = shard / "infer.json"
        if not record_path.is_file():
            raise click.ClickException(f"{shard}: not an infer output (no infer.json)")
        record = json.loads(record_path.read_text())
        if not record.get("shard"):
            raise click.ClickException(f"{shard}: not made with --shard K/N")
        records.append(record)
    counts = {record["shard"]["of"] for record in records}
    if len(counts) != 1:
        raise click.ClickException(f"shards of different N: {sorted(counts)}")
    total = counts.pop()
    indices = sorted(record["shard"]["index"] for record in records)
    if indices != list(range(1, total + 1)):
        missing = sorted(set(range(1, total + 1)) - set(indices))
        raise click.ClickException(f"shards given: {indices} of {total}" + (f"; missing {missing}" if missing else
                                                                             "; one is given twice"))
    expected = run_settings(records[0])
    for shard, record in zip(shards[1:], records[1:], strict=True):
        for what, value in run_settings(record).items():
            if value != expected[what]:
                raise click.ClickException(f"{shard}: its {what} differ from {shards[0]}'s ({value!r} against "
                                           f"{expected[what]!r}): shards of one run use one model and one set of "
                                           "options (and, for compute, one precision: give --precision)")
    return records


def run_settings(record: dict) -> dict:
    """What must be the same in every shard of one run (from its infer.json): the weights, the options, the preset
    and the precision the model computed in."""
    return {"weights_sha256": record.get("model", {}).get("weights_sha256"), "options": record.get("options"),
            "preset": record.get("preset"), "compute": record.get("compute")}


def input_order(shards: list[Path], records: list[dict]) -> dict[str, int]:
    """Each image's place in the single run: shard K/N predicted inputs K-1, K-1+N, … in its predictions.csv's
    order (failed images included), so every table can be put back in the order one run writes."""
    order = {}
    for shard, record in zip(shards, records, strict=True):
        index, total = record["shard"]["index"], record["shard"]["of"]
        for position, row in enumerate(_rows(shard / "predictions.csv")[1]):
            order[row["file"]] = index - 1 + position * total
    return order


def in_run_order(rows: list[dict], order: dict[str, int]) -> list[dict]:
    """Rows (one image's rows together, as each shard wrote them) sorted by their image's place; stable."""
    return sorted(rows, key=lambda row: order.get(row.get("file") or row.get("image") or "", len(order)))


def merge(shards: list[Path], output: Path, overwrite: bool = False) -> dict:
    """Write the merged folder; returns its summary (images, failed)."""
    from train.scores import pool_scores

    records = check_shards(shards)
    order = input_order(shards, records)
    with atomic_output(output, overwrite) as temp:
        seen: dict[str, Path] = {}
        for shard in shards:
            for path in sorted(shard.rglob("*")):
                relative = path.relative_to(shard)
                if path.is_dir() or relative.name in (*TABLES, "scores.csv", "infer.json"):
                    continue
                if str(relative) in seen:
                    raise click.ClickException(f"{relative} is in {seen[str(relative)]} and {shard}")
                seen[str(relative)] = shard
                (temp / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, temp / relative)
        for table in TABLES:
            columns, rows = [], []
            for shard in shards:
                shard_columns, shard_rows = _rows(shard / table)
                columns = columns or shard_columns
                if shard_columns != columns:
                    raise click.ClickException(f"{shard / table}: columns differ from the other shards'")
                rows += shard_rows
            _write(temp / table, columns, in_run_order(rows, order))
        scored = [shard / "scores.csv" for shard in shards if (shard / "scores.csv").is_file()]
        if scored:
            columns, per_image = [], []
            for path in scored:
                shard_columns, rows = _rows(path)
                columns = columns or shard_columns
                per_image += [row for row in rows if row["file"] != POOLED_ROW]
            numbers = [{k: _number(v) for k, v in row.items() if k != "file" and v != ""} for row in per_image]
            pooled = pool_scores([{k: v for k, v in row.items() if k in columns} for row in numbers])
            pooled_row = {"file": POOLED_ROW, **{k: (f"{v:.6g}" if isinstance(v, float) else v)
                                                 for k, v in pooled.items()}}
            _write(temp / "scores.csv", columns, [*in_run_order(per_image, order), pooled_row])
        failed = [name for record in records for name in record.get("failed", [])]
        summary = {"tool": "infer.merge", "shards": records, "predicted": sum(r.get("predicted", 0) for r in records),
                   "failed": failed}
        (temp / "infer.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return summary


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("shards", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--output", "output_path", required=True, type=click.Path(path_type=Path),
              help="The merged folder to create.")
@click.option("--overwrite", is_flag=True, help="Replace an existing merged folder.")
def main(shards: tuple[Path, ...], output_path: Path, overwrite: bool) -> None:
    """Merge the output folders of infer --shard 1/N … N/N into OUTPUT."""
    if output_path.exists() and not overwrite:
        raise click.ClickException(f"{output_path} exists (use --overwrite to replace it)")
    summary = merge(list(shards), output_path, overwrite)
    click.echo(f"merged {len(shards)} shard(s), {summary['predicted']} image(s) into {output_path}")


if __name__ == "__main__":
    main()
