"""Where each ground truth (or a model's mask) puts a nucleus's edge, measured on the image: no model needed.

    python bench/gt_edges.py --fields ../shared/data/isbi2014/EDF [--gt-rule auto --gt-rule auto-interior]
                             [--predictions DIR]

Across the edge of a mask, a nucleus's grey level falls from the background's to the nucleus's. For every pixel
within REACH px of the mask's edge, its signed distance to it (inside +1, +2, …; outside −1, −2, …) bins the
field's grey level; the *half-crossing* is where that profile passes half-way between the level REACH px outside
and REACH px inside, linearly between bins. It says where the mask's edge sits against the image's: +1 means the
mask runs about a pixel outside the nucleus's visible edge, 0 that both agree. Two masks of one field (two GT
readings, or GT and prediction) whose half-crossings differ by d disagree by about d px around every nucleus.

`--predictions DIR` (masks named as the fields, `EDFnnn.png`, e.g. an infer output) adds each prediction's own
half-crossing and its nucleus Dice against the first rule's GT as it is, eroded and dilated by one pixel. The last
line is one JSON object.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from statistics import fmean

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import click  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

REACH = 5  # px each side of the edge: nuclei are ~11 px in radius, their halos a few px
_CROSS = ndimage.generate_binary_structure(2, 1)


def edge_profile(grey: np.ndarray, mask: np.ndarray, reach: int = REACH) -> dict[int, float]:
    """Mean grey level at each signed distance from the mask's edge (±1 … ±reach; inside positive)."""
    mask = mask.astype(bool)
    if mask.all() or not mask.any():
        return {}  # no edge
    inside = np.rint(ndimage.distance_transform_edt(mask))
    outside = np.rint(ndimage.distance_transform_edt(~mask))
    signed = np.where(mask, inside, -outside).astype(np.int64)
    profile = {}
    for k in (*range(-reach, 0), *range(1, reach + 1)):
        at = signed == k
        if at.any():
            profile[k] = float(grey[at].mean())
    return profile


def half_crossing(profile: dict[int, float]) -> float | None:
    """Where the profile first passes half-way between its outermost and innermost levels (None if it never does,
    e.g. an empty mask)."""
    ks = sorted(profile)
    if not ks or ks[0] > 0 or ks[-1] < 0 or profile[ks[0]] == profile[ks[-1]]:
        return None  # no edge, or one side of it only, or nothing changes across it
    half = (profile[ks[0]] + profile[ks[-1]]) / 2
    for a, b in zip(ks, ks[1:], strict=False):
        va, vb = profile[a] - half, profile[b] - half
        if va == 0:
            return float(a)
        if va * vb < 0:
            return a + (b - a) * va / (va - vb)
    return None


def dice(truth: np.ndarray, prediction: np.ndarray) -> float:
    from train.scores import dice_from_counts, pixel_counts

    counts = pixel_counts(truth, prediction)
    return dice_from_counts(counts["tp"], counts["fp"], counts["fn"])


def prediction_row(grey: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> dict:
    """A prediction's own edge and its Dice against ``truth`` as it is, one pixel smaller and one larger."""
    return {"half_crossing": half_crossing(edge_profile(grey, prediction)),
            "dice": dice(prediction, truth),
            "dice_eroded": dice(ndimage.binary_erosion(prediction, _CROSS), truth),
            "dice_dilated": dice(ndimage.binary_dilation(prediction, _CROSS), truth)}


def _round(value):
    return None if value is None else round(value, 4)


@click.command()
@click.option("--fields", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="ISBI layout: EDFnnn.png + EDFnnn_GT.png (GT as published).")
@click.option("--gt-rule", "rules", multiple=True, default=("auto", "auto-interior"), show_default=True,
              help="GT readings to measure (prep.truth.GT_RULES); repeat.")
@click.option("--predictions", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Masks named as the fields (an infer output): their edges and Dice ±1 px, against the first rule.")
def main(fields: Path, rules: tuple[str, ...], predictions: Path | None) -> None:
    from prep.edf import InputError, discover_png_pairs
    from prep.truth import GT_RULES, read_truth

    for rule in rules:
        if rule not in GT_RULES:
            raise click.BadParameter(f"{rule!r} is not one of {', '.join(GT_RULES)}", param_hint="--gt-rule")
    try:
        pairs = [(ref.image_path, ref.mask_path) for ref in discover_png_pairs(fields)]
    except InputError as err:
        raise click.ClickException(str(err)) from None
    rows = {}
    for image_path, truth_path in pairs:
        grey = cv2.imread(str(image_path), cv2.IMREAD_GRAYSCALE)
        if grey is None:
            raise click.ClickException(f"{image_path}: not a readable image")
        row = {}
        truths = {}
        for rule in rules:
            truth = read_truth(truth_path, rule)
            truths[rule] = truth.mask
            row[rule] = {"form": truth.form, "nuclei": truth.nuclei,
                         "half_crossing": _round(half_crossing(edge_profile(grey, truth.mask)))}
        line = "  ".join(f"{rule}: {row[rule]['form']} {row[rule]['half_crossing']:+.2f} px" for rule in rules
                         if row[rule]["half_crossing"] is not None)
        if predictions is not None and (predictions / image_path.name).is_file():
            predicted = cv2.imread(str(predictions / image_path.name), cv2.IMREAD_GRAYSCALE) > 0
            measured = {key: _round(value)
                        for key, value in prediction_row(grey, truths[rules[0]], predicted).items()}
            row["prediction"] = measured
            line += (f"  prediction: {measured['half_crossing']:+.2f} px, Dice {measured['dice']:.4f} "
                     f"(eroded {measured['dice_eroded']:.4f}, dilated {measured['dice_dilated']:.4f})")
        rows[image_path.stem] = row
        click.echo(f"{image_path.stem}  {line}")
    summary = {}
    for rule in rules:
        for form in ("filled", "outline"):
            values = [row[rule]["half_crossing"] for row in rows.values()
                      if row[rule]["form"] == form and row[rule]["half_crossing"] is not None]
            if values:
                summary[f"{rule}:{form}"] = {"fields": len(values), "mean_half_crossing": round(fmean(values), 3)}
                click.echo(f"{rule}, {form} GT: mean half-crossing {fmean(values):+.2f} px over {len(values)} "
                           "field(s)")
    click.echo(json.dumps({"fields": rows, "summary": summary}, sort_keys=True))


if __name__ == "__main__":
    main()
