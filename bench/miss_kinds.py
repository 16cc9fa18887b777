"""Which annotated nuclei a whole-field run does not find, and what they are: at the edge, small, pale, in a dark
clump, or other.

    python bench/miss_kinds.py --runs OUT [--runs OUT2 ...] [--predictions infer] [--picture misses.png]

For every held-out field of a bench-folds run (`OUT/folds/foldK/test/<stem>.png` and `<stem>_GT.png`, GT read as prep
reads it; the saved mask `OUT/foldK/<predictions>/<stem>.png`) each annotated nucleus (8-connected, as the scorer
counts) is measured on the field: its contrast, the mean grey of its surroundings minus its own (the surroundings
estimated under it by inpainting, as `prep --fade-factors` does), and that surroundings' grey. A nucleus the
prediction does not find (no predicted object holds more than 0.6 of it and lies more than 0.6 in it: the scorer's
correct detection) is, the first that holds: *edge* when it lies within EDGE_GAP px of the field's border (infer's
preset drops a prediction that touches the border, and one a pixel wider than the nucleus would), *small* when under
SMALL_AREA px, *pale* when its contrast is under PALE_CONTRAST × the median contrast of all nuclei read, *dark clump*
when its surroundings are under DARK_SURROUNDINGS × their median, else *other*. It is *missed* when no prediction
touches it and *partial* when one does. The last line is one JSON object.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import click  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from bench_folds import centred_crops  # noqa: E402
from error_census import CROP, SMALL_AREA, predictions_option, runs_option  # noqa: E402
from error_census import picture as write_montage  # noqa: E402
from error_census import run_fields as census_fields  # noqa: E402

# Thresholds fixed with the intensity-jitter rule (docs/results.md), before any variant's masks existed.
EDGE_GAP = 3  # px between a nucleus and the field's border
PALE_CONTRAST = 0.5  # × the median nucleus's contrast to its surroundings
DARK_SURROUNDINGS = 0.8  # × the median nucleus's surroundings grey
KINDS = ("edge", "small", "pale", "dark_clump", "other")


def nucleus_measures(image: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, list[dict]]:
    """The 8-connected labels of ``truth`` and, per nucleus, its id, area, (x, y) centre, gap to the image's border
    (px; 0: it touches it), contrast (mean surroundings − mean own grey: dark nuclei are positive) and surroundings
    grey, on the grey ``image``."""
    from scipy import ndimage

    from prep.augment import nucleus_surroundings

    labels, count = ndimage.label(truth, structure=np.ones((3, 3)))
    if not count:
        return labels, []
    surroundings = nucleus_surroundings(image, truth)[1].astype(np.float64)
    ids = np.arange(1, count + 1)
    own = ndimage.mean(image.astype(np.float64), labels, ids)
    around = ndimage.mean(surroundings, labels, ids)
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    centres = ndimage.center_of_mass(truth, labels, ids)
    height, width = truth.shape
    gaps = [min(rows.start, cols.start, height - rows.stop, width - cols.stop)
            for rows, cols in ndimage.find_objects(labels)]
    return labels, [{"id": int(i), "area": int(areas[i]), "centre": (round(x), round(y)), "edge_gap": int(gap),
                     "contrast": float(a - o), "surroundings": float(a)}
                    for i, o, a, (y, x), gap in zip(ids, own, around, centres, gaps, strict=True)]


def found_and_touched(labels: np.ndarray, count: int, prediction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per nucleus id (index 0 unused): whether a predicted object detects it correctly (train.scores' test),
    whether one touches it."""
    from train.scores import NUCLEUS_MATCH_FRACTION, label_objects, overlap_pairs

    predicted, n_pred = label_objects(prediction, 8)
    truth_id, pred_id, overlap = overlap_pairs(labels, predicted, n_pred)
    truth_area = np.bincount(labels.ravel(), minlength=count + 1)
    pred_area = np.bincount(predicted.ravel(), minlength=n_pred + 1)
    correct = (overlap > NUCLEUS_MATCH_FRACTION * truth_area[truth_id]) & (
        overlap > NUCLEUS_MATCH_FRACTION * pred_area[pred_id])
    found, touched = np.zeros(count + 1, bool), np.zeros(count + 1, bool)
    found[truth_id[correct]] = True
    touched[truth_id] = True
    return found, touched


def kind_of(nucleus: dict, median_contrast: float, median_surroundings: float) -> str:
    if nucleus["edge_gap"] < EDGE_GAP:
        return "edge"
    if nucleus["area"] < SMALL_AREA:
        return "small"
    if nucleus["contrast"] < PALE_CONTRAST * median_contrast:
        return "pale"
    if nucleus["surroundings"] < DARK_SURROUNDINGS * median_surroundings:
        return "dark_clump"
    return "other"


def run_fields(run: Path, predictions: str) -> list[tuple[str, Path, Path, Path, Path]]:
    """(field, image, GT, saved mask, overlay) of every held-out field of a bench-folds run folder."""
    found = []
    for stem, truth, mask, overlay in census_fields(run, predictions):
        image = truth.parent / f"{stem}.png"
        if not image.is_file():
            raise click.ClickException(f"{image}: no field image for {truth}")
        found.append((stem, image, truth, mask, overlay))
    return found


def census(runs: list[Path], predictions: str) -> dict:
    """Per run: every nucleus not found, with its kind; the medians every kind is judged against."""
    from prep.truth import read_truth

    measured = []  # (run, stem, overlay path, nucleus, found, touched)
    for run in runs:
        for stem, image_path, truth_path, mask_path, overlay_path in run_fields(run, predictions):
            image = cv2.imread(str(image_path), cv2.IMREAD_GRAYSCALE)
            if image is None:
                raise click.ClickException(f"{image_path}: cannot read the field image")
            try:
                truth = read_truth(truth_path).mask
            except ValueError as err:
                raise click.ClickException(str(err)) from None
            prediction = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
            if prediction is None or prediction.shape != truth.shape:
                raise click.ClickException(f"{mask_path}: unreadable, or not the size of {truth_path}")
            labels, nuclei = nucleus_measures(image, truth)
            found, touched = found_and_touched(labels, len(nuclei), prediction > 0)
            measured += [(run, stem, overlay_path, n, bool(found[n["id"]]), bool(touched[n["id"]])) for n in nuclei]
    if not measured:
        raise click.ClickException("no annotated nucleus in any held-out field")
    # The medians are over every nucleus read, so each run is judged by the same yardstick when the fields repeat.
    median_contrast = median(n["contrast"] for _, _, _, n, _, _ in measured)
    median_surroundings = median(n["surroundings"] for _, _, _, n, _, _ in measured)
    result = {"median_contrast": round(median_contrast, 2), "median_surroundings": round(median_surroundings, 2),
              "runs": {}}
    for run in runs:
        mine = [entry for entry in measured if entry[0] == run]
        lost = [{"field": stem, "overlay": str(overlay), **n, "kind": kind_of(n, median_contrast, median_surroundings),
                 "touched": touched, "relative_contrast": round(n["contrast"] / median_contrast, 3)}
                for _, stem, overlay, n, found, touched in mine if not found]
        result["runs"][str(run)] = {
            "nuclei": len(mine), "not_found": len(lost),
            **{kind: sum(entry["kind"] == kind for entry in lost) for kind in KINDS},
            "missed": sum(not entry["touched"] for entry in lost),
            "partial": sum(entry["touched"] for entry in lost),
            "lost": lost,
        }
    return result


def picture(result: dict, path: Path) -> None:
    """Every nucleus not found, its overlay cut CROP px around it, captioned with its field, place and kind."""
    panels = []
    for run, row in result["runs"].items():
        for entry in row["lost"]:
            overlay = cv2.imread(entry["overlay"])
            if overlay is None:
                raise click.ClickException(f"{entry['overlay']}: no overlay for the picture")
            x, y = entry["centre"]
            caption = f"{Path(run).name} {entry['field']} {x},{y} {entry['kind']} {entry['relative_contrast']:.2f}"
            panels.append((caption, centred_crops(overlay, [(x, y)], CROP)[0]))
    if not panels:
        raise click.ClickException("every annotated nucleus was found: nothing to draw")
    write_montage(panels, path)


@click.command()
@runs_option
@predictions_option
@click.option("--picture", "picture_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write every nucleus not found here, magnified (PNG or JPEG).")
def main(runs: tuple[Path, ...], predictions: str, picture_path: Path | None) -> None:
    """Sort the annotated nuclei each run does not find into edge, small, pale, dark-clump and other."""
    result = census(list(runs), predictions)
    for run, row in result["runs"].items():
        click.echo(f"{run}: {row['not_found']} of {row['nuclei']} nuclei not found ({row['missed']} missed, "
                   f"{row['partial']} partial): {row['edge']} at the edge, {row['small']} small, {row['pale']} pale, "
                   f"{row['dark_clump']} in a dark clump, "
                   f"{row['other']} other")
    if picture_path:
        picture(result, picture_path)
    click.echo(json.dumps(result))


if __name__ == "__main__":
    main()
