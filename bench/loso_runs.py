"""How far apart repeated six-fold runs land: the record of every leave-one-source-out run, summed up per variant.

    python bench/loso_runs.py [--runs bench/results/loso_runs.csv] [--line 0.90] [--pool TEXT ...]

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
from pathlib import Path
from statistics import fmean, stdev

import click

RUNS = Path(__file__).resolve().parent / "results" / "loso_runs.csv"
SOURCES = ("10001", "10002", "10006", "10007", "10009", "10010")
# The per-source values are kept to 3 decimals and some recorded means too: their mean may differ by this much.
ROUNDING = 0.001


def read_runs(path: Path) -> list[dict]:
    """The record's rows, each with its per-source Dice as floats under ``sources`` and the recorded mean."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    missing = [name for name in ("variant", "nucleus_dice", *SOURCES) if rows and name not in rows[0]]
    if not rows or missing:
        raise ValueError(f"{path}: {'no runs' if not rows else 'no column ' + ', '.join(missing)}")
    runs = []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        try:
            sources = {source: float(row[source]) for source in SOURCES}
            recorded = float(row["nucleus_dice"])
        except ValueError as err:
            raise ValueError(f"{path}:{line}: {err}") from None
        if abs(fmean(sources.values()) - recorded) > ROUNDING:
            raise ValueError(f"{path}:{line}: nucleus_dice {recorded} is not the mean of its sources "
                             f"({fmean(sources.values()):.4f})")
        runs.append({"line": line, "date": row.get("date", ""), "variant": row["variant"], "sources": sources,
                     "nucleus_dice": recorded})
    return runs


def summarise(runs: list[dict], line: float) -> dict:
    """Spread of the six-fold means of runs of one variant, and each source's range over them."""
    if not runs:
        raise ValueError("no runs to summarise")
    means = [run["nucleus_dice"] for run in runs]
    spread = stdev(means) if len(means) > 1 else None  # one run says nothing of the spread
    return {
        "runs": len(runs),
        "mean": round(fmean(means), 4),
        "sd": None if spread is None else round(spread, 4),
        "se": None if spread is None else round(spread / math.sqrt(len(means)), 4),
        "min": min(means),
        "max": max(means),
        "at_or_above_line": sum(mean >= line for mean in means),
        "sources": {source: {"mean": round(fmean(run["sources"][source] for run in runs), 3),
                             "min": min(run["sources"][source] for run in runs),
                             "max": max(run["sources"][source] for run in runs)} for source in SOURCES},
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
    """Sum up repeated leave-one-source-out runs per variant: mean, spread, and each source's range."""
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
        click.echo(f"{variant}: {summary['runs']} run(s), six-fold mean {summary['mean']:.4f} ({spread}), "
                   f"{summary['at_or_above_line']} at or above {line:.2f}")
        click.echo("    " + ", ".join(f"{source} {s['min']:.3f}-{s['max']:.3f}"
                                      for source, s in summary["sources"].items()))
    click.echo(json.dumps(report))


if __name__ == "__main__":
    main()
