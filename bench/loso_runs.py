"""How far apart repeated fold runs land: the record of every bench-folds run, summed up per variant.

    python bench/loso_runs.py [--runs bench/results/loso_runs.csv] [--line 0.90] [--pool TEXT ...]
    python bench/loso_runs.py --runs bench/results/fields_runs.csv --line 0.93   # the whole-field folds

The record's source columns are those named like a source (`10001`, `EDF004`): the six tile sources of
loso_runs.csv, or the ten whole fields of fields_runs.csv; an `f1` column, where present, is summed up too.

Each row of the record is one full `make bench-folds FOLDS=6` run (a wall-clock training budget, so the same code
lands differently from run to run): its per-source nucleus Dice, the six-fold mean bench-folds printed, the commit
its fresh clone was at (`code`, where known) and the commit that wrote it into the README (`recorded_in`). Per
variant this prints the mean of the runs' six-fold means, their standard deviation (how far one run may land from
another), the standard error of that mean (how well the runs pin the expected score down), how many runs reach
``--line``, and each source's range; ``--pool TEXT`` adds the same for every run whose variant contains TEXT
(variants that share one change, e.g. with and without another); the last line is one JSON object.
A row whose recorded mean disagrees with its own per-source values is refused, naming the row.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from statistics import fmean, stdev

import click

RUNS = Path(__file__).resolve().parent / "results" / "loso_runs.csv"
SOURCE_COLUMN = re.compile(r"^(?:EDF)?\d+$")  # a tile source id (10001) or a field (EDF004)
# The per-source values are kept to 3 decimals and some recorded means too: their mean may differ by this much.
ROUNDING = 0.001


def read_runs(path: Path) -> list[dict]:
    """The record's rows, each with its per-source Dice as floats under ``sources`` and the recorded mean."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    columns = list(rows[0]) if rows else []
    source_columns = [name for name in columns if SOURCE_COLUMN.match(name)]
    missing = [name for name in ("variant", "nucleus_dice") if name not in columns]
    if not source_columns:
        missing.append("per source (10001, EDF004, …)")
    if not rows or missing:
        raise ValueError(f"{path}: {'no runs' if not rows else 'no column ' + ', '.join(missing)}")
    runs = []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        try:
            sources = {source: float(row[source]) for source in source_columns}
            recorded = float(row["nucleus_dice"])
            f1 = float(row["f1"]) if row.get("f1") else None
        except ValueError as err:
            raise ValueError(f"{path}:{line}: {err}") from None
        if abs(fmean(sources.values()) - recorded) > ROUNDING:
            raise ValueError(f"{path}:{line}: nucleus_dice {recorded} is not the mean of its sources "
                             f"({fmean(sources.values()):.4f})")
        runs.append({"line": line, "date": row.get("date", ""), "variant": row["variant"], "sources": sources,
                     "nucleus_dice": recorded, "f1": f1})
    return runs


def summarise(runs: list[dict], line: float) -> dict:
    """Spread of the fold means of runs of one variant, and each source's range over them."""
    if not runs:
        raise ValueError("no runs to summarise")
    means = [run["nucleus_dice"] for run in runs]
    spread = stdev(means) if len(means) > 1 else None  # one run says nothing of the spread
    f1s = [run["f1"] for run in runs if run.get("f1") is not None]
    return {
        "runs": len(runs),
        "mean": round(fmean(means), 4),
        "f1_mean": round(fmean(f1s), 4) if f1s else None,
        "sd": None if spread is None else round(spread, 4),
        "se": None if spread is None else round(spread / math.sqrt(len(means)), 4),
        "min": min(means),
        "max": max(means),
        "at_or_above_line": sum(mean >= line for mean in means),
        "sources": {source: {"mean": round(fmean(run["sources"][source] for run in runs), 3),
                             "min": min(run["sources"][source] for run in runs),
                             "max": max(run["sources"][source] for run in runs)} for source in runs[0]["sources"]},
    }


def by_variant(runs: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(run["variant"], []).append(run)
    return groups


def pooled(groups: dict[str, list[dict]], text: str) -> list[dict]:
    """Every run of the variants whose name contains ``text`` (case-insensitive), in record order."""
    runs = [run for variant, group in groups.items() if text.lower() in variant.lower() for run in group]
    return sorted(runs, key=lambda run: run["line"])


@click.command()
@click.option("--runs", "runs_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=RUNS,
              show_default=True, help="The record of six-fold runs (CSV).")
@click.option("--line", type=click.FloatRange(0, 1), default=0.90, show_default=True,
              help="Count the runs whose six-fold mean reaches this nucleus Dice.")
@click.option("--pool", "pools", multiple=True, metavar="TEXT",
              help="Also sum up every run whose variant contains TEXT, as one group (repeatable).")
def main(runs_path: Path, line: float, pools: tuple[str, ...]) -> None:
    """Sum up repeated fold runs per variant: mean, spread, and each source's range."""
    try:
        groups = by_variant(read_runs(runs_path))
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    for text in pools:
        runs = pooled(groups, text)
        if not runs:
            raise click.BadParameter(f"no variant in {runs_path} contains {text!r}", param_hint="--pool")
        groups[f"pooled: every variant with {text!r}"] = runs
    report = {}
    for variant, runs in groups.items():
        summary = summarise(runs, line)
        report[variant] = summary
        spread = ("one run" if summary["sd"] is None else
                  f"SD {summary['sd']:.4f}, SE {summary['se']:.4f}, {summary['min']:.4f}-{summary['max']:.4f}")
        f1 = f", object F1 {summary['f1_mean']:.4f}" if summary["f1_mean"] is not None else ""
        click.echo(f"{variant}: {summary['runs']} run(s), mean {summary['mean']:.4f} ({spread}){f1}, "
                   f"{summary['at_or_above_line']} at or above {line:.2f}")
        click.echo("    " + ", ".join(f"{source} {s['min']:.3f}-{s['max']:.3f}"
                                      for source, s in summary["sources"].items()))
    click.echo(json.dumps(report))


if __name__ == "__main__":
    main()
