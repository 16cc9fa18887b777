"""Where a whole-field run loses its objects, counted on its saved masks: what the ground truth's conventions cap.

    python bench/error_census.py --runs OUT [--runs OUT2 ...] [--predictions infer] [--picture extras.jpg]

For every held-out field of a bench-folds run (`OUT/folds/foldK/test/*_GT.png`, GT read as prep reads it, and
the saved mask `OUT/foldK/<predictions>/<stem>.png`: `infer`, or a `reinfer_folds.py` variant such as
`reinfer-whole_tta4`) it sorts the predicted objects that touch no annotated nucleus and the annotated nuclei that
no prediction touches (8-connected, as the scorer counts) by size: under SMALL_AREA px (specks, debris) or
nucleus-sized. It then scores the field twice: as the ground truth stands, and as it would stand had the
annotators drawn every isolated nucleus-sized object the way the model outlined it. The second figure is an upper
bound of what the ground truth's conventions cost (it takes every such object for a nucleus the annotators left
out; `--picture` shows each one so that a reader can judge). The last line is one JSON object.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from statistics import fmean

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import click  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from bench_folds import centred_crops, lone_objects, montage  # noqa: E402

# Below this a lone object is a speck, not a nucleus: the annotated nuclei's 5th percentile is 193 px (median 399)
# on the shared fields (docs/results.md, run 1).
SMALL_AREA = 100
CROP = 96  # px of the overlay around each object in --picture
KINDS = ("extra_nucleus_sized", "extra_small", "missed_nucleus_sized", "missed_small")


def field_census(truth: np.ndarray, prediction: np.ndarray) -> dict:
    """Counts of lone extra and missed objects by size, the field's scores as scored, and its scores had the
    isolated nucleus-sized extras been annotated (``*_if_annotated``)."""
    from train.scores import score_masks

    truth, prediction = truth.astype(bool), prediction.astype(bool)
    labels, extras = lone_objects(prediction, truth)
    _, missed = lone_objects(truth, prediction)
    nucleus_sized = [(label_id, centre) for label_id, area, centre in extras if area >= SMALL_AREA]
    completed = truth | np.isin(labels, [label_id for label_id, _ in nucleus_sized])
    scored, if_annotated = score_masks(truth, prediction), score_masks(completed, prediction)
    return {
        "extra_nucleus_sized": len(nucleus_sized),
        "extra_small": sum(area < SMALL_AREA for _, area, _ in extras),
        "missed_nucleus_sized": sum(area >= SMALL_AREA for _, area, _ in missed),
        "missed_small": sum(area < SMALL_AREA for _, area, _ in missed),
        "n_extra": scored["n_extra"], "n_missed": scored["n_missed"],
        "nucleus_dice": scored["nucleus_dice"], "f1": scored["object_f1"],
        "nucleus_dice_if_annotated": if_annotated["nucleus_dice"], "f1_if_annotated": if_annotated["object_f1"],
        "extra_centres": [centre for _, centre in nucleus_sized],
    }


def run_fields(run: Path, predictions: str) -> list[tuple[str, Path, Path, Path]]:
    """(field, GT, saved mask, overlay) of every held-out field of a bench-folds run folder."""
    found = []
    for test in sorted((run / "folds").glob("fold*/test")):
        fold = test.parent.name
        for truth in sorted(test.glob("*_GT.png")):
            stem = truth.name.removesuffix("_GT.png")
            mask = run / fold / predictions / f"{stem}.png"
            if not mask.is_file():
                raise click.ClickException(f"{mask}: no saved mask for {truth} (is --predictions right?)")
            found.append((stem, truth, mask, run / fold / predictions / "overlays" / f"{stem}.png"))
    if not found:
        raise click.ClickException(f"{run}: no folds/fold*/test/*_GT.png: not a whole-field bench-folds run")
    return found


def census(runs: list[Path], predictions: str, crops: list | None = None) -> dict:
    """Each run's census; with ``crops``, each isolated nucleus-sized extra's (caption, overlay crop) added."""
    from prep.truth import read_truth

    result = {}
    for run in runs:
        fields = {}
        for stem, truth_path, mask_path, overlay_path in run_fields(run, predictions):
            truth = read_truth(truth_path).mask
            prediction = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) > 0
            fields[stem] = field_census(truth, prediction)
            overlay = cv2.imread(str(overlay_path)) if crops is not None else None
            if overlay is not None:
                centres = fields[stem]["extra_centres"]
                crops += [(f"{run.name} {stem} {x},{y}", crop)
                          for (x, y), crop in zip(centres, centred_crops(overlay, centres, CROP), strict=True)]
        totals = {kind: sum(field[kind] for field in fields.values()) for kind in (*KINDS, "n_extra", "n_missed")}
        means = {key: round(fmean(field[key] for field in fields.values()), 4)
                 for key in ("nucleus_dice", "f1", "nucleus_dice_if_annotated", "f1_if_annotated")}
        result[str(run)] = {**totals, **means, "fields": {stem: {k: v for k, v in field.items() if k != "extra_centres"}
                                                          for stem, field in fields.items()}}
    return result


def picture(crops: list[tuple[str, np.ndarray]], path: Path) -> None:
    """Each isolated nucleus-sized extra object, its overlay cut CROP px around it, captioned."""
    if not cv2.imwrite(str(path), montage(crops, columns=8, size=2 * CROP)):
        raise click.ClickException(f"{path}: cannot write the picture")


# The options every census of saved whole-field runs takes (error_census, miss_kinds).
runs_option = click.option("--runs", multiple=True, required=True,
                           type=click.Path(exists=True, file_okay=False, path_type=Path),
                           help="A bench-folds --out folder of whole fields (repeat for several runs).")
predictions_option = click.option("--predictions", default="infer", show_default=True,
                                  help="Which saved masks of each fold: infer (the run's own), or a reinfer_folds.py "
                                       "variant folder.")


@click.command()
@runs_option
@predictions_option
@click.option("--picture", "picture_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write every isolated nucleus-sized extra object here, magnified (PNG or JPEG).")
def main(runs: tuple[Path, ...], predictions: str, picture_path: Path | None) -> None:
    """Count each run's lone extra and missed objects by size, and score them as if annotated."""
    crops = [] if picture_path else None
    result = census(list(runs), predictions, crops)
    for run, row in result.items():
        click.echo(f"{run}: {row['n_extra']} extra ({row['extra_nucleus_sized']} isolated nucleus-sized, "
                   f"{row['extra_small']} small), {row['n_missed']} missed ({row['missed_nucleus_sized']} isolated "
                   f"nucleus-sized, {row['missed_small']} small); Dice {row['nucleus_dice']:.4f}, F1 {row['f1']:.4f} "
                   f"as scored; {row['nucleus_dice_if_annotated']:.4f}, {row['f1_if_annotated']:.4f} had the "
                   "isolated nucleus-sized ones been annotated")
    if picture_path and crops:
        picture(crops, picture_path)
    click.echo(json.dumps(result))


if __name__ == "__main__":
    main()
