"""A training run's folders and records: where the weights, backup and log go, the move-aside that keeps a
finished model safe under --overwrite, and the curves and CSVs written from the per-epoch log. No Keras."""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from train.config import Config

# The per-epoch log's mark of the epochs train.callbacks.WeightAverage averaged (records need no Keras).
AVERAGED_KEY = "averaged"
BEST_WEIGHTS = "best.weights.h5"
BEST_MODEL = "best.keras"
LOG_NAME = "train_log.csv"
BACKUP_DIR = "backup"
WEIGHT_AVERAGE_STATE = "weight_average.npz"  # in BACKUP_DIR: an interrupted run's running mean
RUN_RECORD = "run.json"  # in BACKUP_DIR: what the run started on (its training tiles), to check a resume against


class RunInterrupted(KeyboardInterrupt):
    """A Ctrl-C after which the previous model was put back; its message says so."""


class TrainError(RuntimeError):
    """A problem the user can fix (data, model files); the message names it."""


@dataclass
class RunPaths:
    model_dir: Path
    eval_dir: Path
    montage_dir: Path

    @property
    def best(self) -> Path:
        return self.model_dir / BEST_WEIGHTS

    @property
    def best_model(self) -> Path:
        return self.model_dir / BEST_MODEL

    @property
    def trained(self) -> Path:
        """The weights file a finished run left: best.weights.h5, else best.keras (which may not exist yet)."""
        return self.best if self.best.exists() else self.best_model

    @property
    def backup(self) -> Path:
        return self.model_dir / BACKUP_DIR

    @property
    def log(self) -> Path:
        return self.eval_dir / LOG_NAME


def run_paths(config: Config) -> RunPaths:
    return RunPaths(config.train.model_dir, config.train.eval_dir, config.train.epoch_change_infer_dir)


PREVIOUS_TAG = "previous"  # .<model_dir>.previous: the model an --overwrite run replaces, until it succeeds


@dataclass
class Previous:
    """A finished model (its log and epoch montages too) moved aside by --overwrite: put back if the new run
    fails."""

    model_dir: Path | None
    log: Path | None
    montages: Path | None = None


def previous_paths(paths: RunPaths) -> Previous:
    return Previous(paths.model_dir.with_name(f".{paths.model_dir.name}.{PREVIOUS_TAG}"),
                    paths.log.with_name(f".{paths.log.name}.{PREVIOUS_TAG}"),
                    paths.montage_dir.with_name(f".{paths.montage_dir.name}.{PREVIOUS_TAG}"))


def check_writable(paths: RunPaths, config: Config) -> None:
    """Each output folder can be made and written: its nearest existing ancestor is a writable folder."""
    for key, folder in (("model_dir", paths.model_dir), ("eval_dir", paths.eval_dir),
                        ("epoch_change_infer_dir", paths.montage_dir)):
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        problem = (f"{existing} is a file" if not existing.is_dir() else
                   f"cannot write in {existing}" if not os.access(existing, os.W_OK | os.X_OK) else None)
        if problem:
            raise TrainError(f"{config.path}: [train] {key} = {folder}: {problem}")


def has_backup(paths: RunPaths) -> bool:
    """An interrupted run left state to resume from (more than its start record)."""
    return paths.backup.is_dir() and any(entry.name != RUN_RECORD for entry in paths.backup.iterdir())


def prepare_output(paths: RunPaths, config: Config, overwrite: bool, fresh: bool = False) -> tuple[bool, Previous]:
    """Create the run folders; returns (resuming an interrupted run, what was moved aside). A finished model is
    never replaced without ``overwrite`` (or the reference's ``create_backup``, which moves it aside for good);
    with ``overwrite`` it is moved aside and only removed when the new run has finished (``finish_output``)."""
    if fresh and paths.backup.exists():  # an interrupted run: its backup and its epochs' weights go
        shutil.rmtree(paths.backup)
        for partial in (paths.best, paths.best_model):
            partial.unlink(missing_ok=True)
    resuming = has_backup(paths)
    if not resuming and paths.backup.is_dir():  # only the record of a run killed before its first epoch ended
        shutil.rmtree(paths.backup)
    finished = paths.best.exists() or paths.best_model.exists()
    previous = previous_paths(paths)
    if finished and not resuming:
        if config.train.create_backup:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            paths.model_dir.rename(paths.model_dir.with_name(f"{paths.model_dir.name}.backup-{stamp}"))
        elif not overwrite:
            raise TrainError(f"{paths.model_dir} already holds a trained model (use --overwrite to replace it, "
                             f"or [train] create_backup = True to keep it aside)")
        else:
            if previous.model_dir.exists():  # a run that replaced it finished but was killed before cleaning up
                shutil.rmtree(previous.model_dir)
            paths.model_dir.rename(previous.model_dir)
            if paths.log.exists():
                paths.log.replace(previous.log)
            # The montages, unless they lay inside the model folder (moved with it) or hold it.
            if paths.montage_dir.is_dir() and paths.montage_dir not in (paths.model_dir, *paths.model_dir.parents):
                if previous.montages.exists():
                    shutil.rmtree(previous.montages)
                paths.montage_dir.rename(previous.montages)
    if not resuming and paths.log.exists():
        paths.log.unlink()  # a fresh run starts a fresh log; a resumed one appends
    for folder in (paths.model_dir, paths.eval_dir):
        folder.mkdir(parents=True, exist_ok=True)
    return resuming, Previous(*(path if path.exists() else None
                                for path in (previous.model_dir, previous.log, previous.montages)))


def finish_output(paths: RunPaths, previous: Previous, succeeded: bool) -> bool:
    """After a run: on success the moved-aside model goes; on failure it is put back (True when it was). A
    failed run's own weights never stay as the model."""
    if succeeded:
        if previous.model_dir is not None:
            shutil.rmtree(previous.model_dir, ignore_errors=True)
        if previous.log is not None:
            previous.log.unlink(missing_ok=True)
        if previous.montages is not None:
            shutil.rmtree(previous.montages, ignore_errors=True)
        return False
    if previous.model_dir is None:
        for weights in (paths.best, paths.best_model):
            weights.unlink(missing_ok=True)
        return False
    shutil.rmtree(paths.model_dir, ignore_errors=True)
    previous.model_dir.rename(paths.model_dir)
    if previous.log is not None:
        previous.log.replace(paths.log)
    if previous.montages is not None:
        shutil.rmtree(paths.montage_dir, ignore_errors=True)
        previous.montages.rename(paths.montage_dir)
    return True


# ---------------------------------------------------------------------------------------------- records

def read_log(log: Path) -> dict[str, list[float]]:
    with log.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            columns.setdefault(key, []).append(int(value) + 1 if key == "epoch" else float(value))
    return columns


def _write_columns(path: Path, history: dict[str, list[float]], names: list[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["epoch", *names])
        for i, epoch in enumerate(history["epoch"]):
            writer.writerow([epoch, *(f"{history[n][i]:.6g}" for n in names)])


def averaged_epochs(history: dict[str, list[float]]) -> list[int]:
    """The epochs whose weights are averaged into the saved model; none when the run did not average.

    The log's mark counts the snapshots in the mean; a resumed run starts its mean again, so only the epochs
    from the last count of 1 on are in it."""
    marks = history.get(AVERAGED_KEY, [])
    starts = [i for i, count in enumerate(marks) if count == 1]
    if not starts or not all(marks[starts[-1]:]):
        return []  # never averaged, or a resumed run ended before its window: the last weights were kept
    return history["epoch"][starts[-1]:]


# The reference's pooled metric (≈ 0.99 whatever the nuclei) gets its own panel: beside nucleus Dice on one axis it
# flattens every curve that matters.
POOLED_METRICS = ("dice_coef_multiclass",)


def curve_panels(names: list[str]) -> list[tuple[str, list[str]]]:
    """The panels of a curves figure: (title, names); nucleus metrics apart from the pooled reference metric."""
    pooled = [n for n in names if n.removeprefix("val_") in POOLED_METRICS]
    own = [n for n in names if n not in pooled]
    return [(title, group) for title, group in (("nucleus metrics", own),
                                                ("pooled with background (the reference's)", pooled)) if group]


def plot_curves(path: Path, history: dict[str, list[float]], names: list[str], title: str):
    """One PNG of the curves per epoch (train solid, validation dashed); returns the figure's axes' titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = curve_panels(names) if "loss" not in names else [(title, names)]
    figure, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4), squeeze=False)
    averaged = averaged_epochs(history)
    for axis, (panel_title, group) in zip(axes[0], panels, strict=True):
        if averaged:
            # The curves are the run's own weights; the saved model is the mean over this span.
            axis.axvspan(averaged[0] - 0.5, averaged[-1] + 0.5, color="tab:green", alpha=0.12,
                         label=f"averaged into the saved weights ({len(averaged)} epochs)")
        for name in group:
            axis.plot(history["epoch"], history[name], marker="o", markersize=3, label=name,
                      linestyle="--" if name.startswith("val_") else "-")
        axis.set_xlabel("epoch")
        axis.set_title(panel_title if len(panels) > 1 else title)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    titles = [axis.get_title() for axis in axes[0]]
    figure.tight_layout()
    figure.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(figure)
    return titles


def write_history(paths: RunPaths) -> dict[str, list[float]]:
    """eval/train_metrics.csv, eval/train_losses.csv, their PNG plots and history.json, from the log."""
    if not paths.log.exists():
        raise TrainError(f"{paths.log}: no epoch finished, nothing to record")
    history = read_log(paths.log)
    losses = [n for n in history if n in ("loss", "val_loss")]
    metrics = [n for n in history if n not in ("epoch", "loss", "val_loss", "learning_rate", "lr", AVERAGED_KEY)]
    _write_columns(paths.eval_dir / "train_metrics.csv", history, metrics)
    _write_columns(paths.eval_dir / "train_losses.csv", history, losses)
    plot_curves(paths.eval_dir / "train_metrics.png", history, metrics, "metrics per epoch")
    plot_curves(paths.eval_dir / "train_losses.png", history, losses, "loss per epoch")
    (paths.eval_dir / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    return history
