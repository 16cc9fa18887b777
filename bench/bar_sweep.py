"""Every confidence bar scored from one set of masks, and the bar chosen for each fold by the other folds.

    python bench/bar_sweep.py --runs OUT [--runs OUT2 ...] [--predictions reinfer-no-bar] [--bars 0,0.5,...]

infer's `--min-confidence` drops whole predicted nuclei by their mean probability and moves no outline, so a
bench-folds run's masks made *without* the bar (`reinfer_folds.py --variant no-bar='--preset recommended
--min-confidence 0'`, or a run whose own infer had no bar) hold every bar's result: label them as infer does,
drop the ids whose `mean_probability` (the prediction folder's nuclei.csv) is below the bar, and score against
the ground truth read as that infer read it. For each run it reports, per bar, the mean nucleus Dice and the mean
object F1 over folds (fold F1 pooled over the fold's fields, as bench-folds reports it); the bar chosen for each
fold on the *other* folds' held-out fields alone (the highest mean Dice + mean F1 over their fields; a tie goes to
the lower bar) and that procedure's scores; and each field's own best bar, a ceiling no bar chosen without its
ground truth can beat (never a result). The last line printed is one JSON object.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from statistics import fmean

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import click  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

DEFAULT_BARS = (0.0, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)  # the rule's grid (docs/results.md)
FIXED_BAR = 0.85  # infer's --preset recommended, the bar the chosen ones are compared with


def drop_below(labels: np.ndarray, confidence: Mapping[int, float], bar: float) -> np.ndarray:
    """The mask of the labelled nuclei whose mean probability is at least ``bar`` (ids absent from
    ``confidence`` are an error: the labels and the table must be of one prediction)."""
    ids = np.arange(int(labels.max()) + 1)
    missing = [int(i) for i in ids[1:] if int(i) not in confidence]
    if missing:
        raise ValueError(f"nuclei {missing[:5]} of the mask have no mean_probability in the table")
    beyond = sorted(i for i in confidence if i > ids[-1])
    if beyond:
        raise ValueError(f"the table has nuclei {beyond[:5]} the mask lacks (its highest id is {ids[-1]})")
    keep = np.array([False] + [confidence[int(i)] >= bar for i in ids[1:]])
    return keep[labels]


def field_scores(truth: np.ndarray, ignore: np.ndarray | None, labels: np.ndarray, confidence: Mapping[int, float],
                 bars: Sequence[float]) -> dict[float, dict]:
    """score_masks of the prediction at each bar."""
    from train.scores import score_masks

    return {bar: score_masks(truth, drop_below(labels, confidence, bar), ignore=ignore) for bar in bars}


def fold_means(scores: Mapping[str, Mapping[float, dict]], folds: Mapping[str, int], bar_of_fold) -> dict:
    """Mean nucleus Dice over folds (each fold's mean over its fields) and mean pooled object F1 over folds, each
    fold's fields scored at ``bar_of_fold(fold)``."""
    from train.scores import pool_scores

    dice, f1 = [], []
    for fold in sorted(set(folds.values())):
        rows = [scores[field][bar_of_fold(fold)] for field in sorted(scores) if folds[field] == fold]
        dice.append(fmean(row["nucleus_dice"] for row in rows))
        f1.append(pool_scores(rows)["object_f1"])
    return {"nucleus_dice": round(fmean(dice), 4), "f1": round(fmean(f1), 4)}


def choose_bar(scores: Mapping[str, Mapping[float, dict]], fields: Sequence[str], bars: Sequence[float]) -> float:
    """The bar with the highest mean nucleus Dice + mean object F1 over ``fields``; a tie goes to the lower bar."""
    def merit(bar: float) -> float:
        return fmean(scores[f][bar]["nucleus_dice"] + scores[f][bar]["object_f1"] for f in fields)

    return max(sorted(bars), key=lambda bar: round(merit(bar), 12))  # max keeps the first of equals


def sweep(scores: Mapping[str, Mapping[float, dict]], folds: Mapping[str, int], bars: Sequence[float]) -> dict:
    """Every fixed bar's means, the bars chosen by the other folds and their means, and the per-field ceiling."""
    chosen = {fold: choose_bar(scores, [f for f in scores if folds[f] != fold], bars)
              for fold in sorted(set(folds.values()))}
    best = {field: choose_bar(scores, [field], bars) for field in scores}
    ceiling = [scores[field][best[field]] for field in scores]
    return {
        "fixed": {f"{bar:g}": fold_means(scores, folds, lambda _fold, bar=bar: bar) for bar in bars},
        "chosen_bars": {str(fold): bar for fold, bar in chosen.items()},
        "chosen": fold_means(scores, folds, chosen.__getitem__),
        "field_best_bars": best,
        # Means over fields (a field's own best bar has no fold F1), beside the fixed bar's on the same footing.
        "ceiling": {"nucleus_dice_fields": round(fmean(row["nucleus_dice"] for row in ceiling), 4),
                    "f1_fields": round(fmean(row["object_f1"] for row in ceiling), 4),
                    "fixed_nucleus_dice_fields": round(fmean(scores[f][FIXED_BAR]["nucleus_dice"] for f in scores), 4),
                    "fixed_f1_fields": round(fmean(scores[f][FIXED_BAR]["object_f1"] for f in scores), 4)},
        "fields": {field: {f"{bar:g}": {"nucleus_dice": round(row["nucleus_dice"], 4),
                                        "f1": round(row["object_f1"], 4), "n_extra": row["n_extra"],
                                        "n_missed": row["n_missed"]} for bar, row in by_bar.items()}
                   for field, by_bar in scores.items()},
    }


def read_confidence(table: Path) -> dict[str, dict[int, float]]:
    """{image file: {nucleus id: mean probability}} of an infer nuclei.csv."""
    found: dict[str, dict[int, float]] = {}
    with table.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if not row.get("mean_probability"):
                raise click.ClickException(f"{table}: no mean_probability column (an infer older than the bar?)")
            found.setdefault(row["image"], {})[int(row["id"])] = float(row["mean_probability"])
    return found


def run_scores(run: Path, predictions: str, bars: Sequence[float]) -> tuple[dict, dict]:
    """Every held-out field's scores at each bar, and its fold, for one bench-folds --out folder."""
    from infer.measure import label_nuclei
    from prep.truth import read_truth

    scores, folds = {}, {}
    for test in sorted((run / "folds").glob("fold*/test")):
        fold_name = test.parent.name.removeprefix("fold")
        if not fold_name.isdigit():
            raise click.ClickException(f"{test.parent}: not a fold folder of bench-folds (foldK, K a number)")
        fold_dir = run / test.parent.name / predictions
        record = fold_dir / "infer.json"
        if not record.is_file():
            raise click.ClickException(f"{record}: missing (is --predictions right?)")
        try:
            options = json.loads(record.read_text())["options"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise click.ClickException(f"{record}: not an infer record with its options ({error})") from error
        table = fold_dir / "nuclei.csv"
        if not table.is_file():
            raise click.ClickException(f"{table}: missing (infer writes it beside the masks)")
        if options.get("min_confidence") or options.get("split_touching"):
            raise click.ClickException(f"{record}: these masks were made with a bar or split nuclei; the sweep "
                                       "needs them made with --min-confidence 0 and no --split-touching")
        confidence = read_confidence(table)
        for truth_path in sorted(test.glob("*_GT.png")):
            stem = truth_path.name.removesuffix("_GT.png")
            mask = cv2.imread(str(fold_dir / f"{stem}.png"), cv2.IMREAD_GRAYSCALE)
            if mask is None:
                raise click.ClickException(f"{fold_dir / f'{stem}.png'}: no saved mask for {truth_path}")
            try:
                truth = read_truth(truth_path, options.get("gt_rule", "auto"))
            except ValueError as error:  # a TruthError (a ValueError) names the file; a bad gt_rule does not
                message = str(error) if str(truth_path) in str(error) else f"{truth_path}: {error}"
                raise click.ClickException(message) from error
            try:
                scores[stem] = field_scores(truth.mask, truth.ignore, label_nuclei(mask > 0),
                                            confidence.get(f"{stem}.png", {}), bars)
            except ValueError as error:
                raise click.ClickException(f"{fold_dir / f'{stem}.png'}: {error}") from error
            folds[stem] = int(fold_name)
    if not scores:
        raise click.ClickException(f"{run}: no folds/fold*/test/*_GT.png: not a whole-field bench-folds run")
    if len(set(folds.values())) < 2:
        raise click.ClickException(f"{run}: one fold only; a fold's bar is chosen on the other folds' fields")
    return scores, folds


def parse_bars(text: str) -> tuple[float, ...]:
    try:
        bars = tuple(sorted({float(item) for item in text.split(",")}))
    except ValueError:
        raise click.BadParameter(f"{text!r}: give bars as numbers, e.g. 0,0.85,0.9", param_hint="--bars") from None
    if not bars or not all(0 <= bar <= 1 for bar in bars) or FIXED_BAR not in bars:
        raise click.BadParameter(f"{text!r}: bars lie in 0..1 and include the preset's {FIXED_BAR:g}",
                                 param_hint="--bars")
    return bars


@click.command()
@click.option("--runs", multiple=True, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A whole-field bench-folds --out folder (repeat for several runs).")
@click.option("--predictions", default="reinfer-no-bar", show_default=True,
              help="Each fold's masks made without the bar: a reinfer_folds.py variant folder, or infer.")
@click.option("--bars", default=",".join(f"{bar:g}" for bar in DEFAULT_BARS), show_default=True,
              help="The bars to score (comma-separated, 0..1, the preset's 0.85 among them).")
def main(runs: tuple[Path, ...], predictions: str, bars: str) -> None:
    """Score every bar on each run's masks without one, and the bars the other folds choose."""
    grid = parse_bars(bars)
    result = {}
    for run in runs:
        row = sweep(*run_scores(run, predictions, grid), grid)
        fixed, chosen, ceiling = row["fixed"][f"{FIXED_BAR:g}"], row["chosen"], row["ceiling"]
        click.echo(f"{run}: fixed {FIXED_BAR:g}: Dice {fixed['nucleus_dice']:.4f}, F1 {fixed['f1']:.4f}; chosen by "
                   f"the other folds {row['chosen_bars']}: Dice {chosen['nucleus_dice']:.4f}, F1 {chosen['f1']:.4f}; "
                   f"each field's own best (a ceiling): Dice {ceiling['nucleus_dice_fields']:.4f}, "
                   f"F1 {ceiling['f1_fields']:.4f} against the fixed bar's {ceiling['fixed_nucleus_dice_fields']:.4f}, "
                   f"{ceiling['fixed_f1_fields']:.4f} (means over fields)")
        for bar, means in row["fixed"].items():
            click.echo(f"  bar {bar:>5}: Dice {means['nucleus_dice']:.4f}  F1 {means['f1']:.4f}")
        result[str(run)] = row
    click.echo(json.dumps(result))


if __name__ == "__main__":
    main()
