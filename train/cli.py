"""``train`` command line: ``train fit``, ``train evaluate``, ``train summary``, each from a config file."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import click

from prep.console import show_warning

# TensorFlow's C++ log (e.g. "failed call to cuInit" on every CPU machine) is not for our users; real
# errors still surface as exceptions. Set TF_CPP_MIN_LOG_LEVEL yourself to see it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")



config_option = click.option("--config", "config_path", required=True, type=click.Path(path_type=Path),
                             help="INI config (the reference's train_eval_infer.config format).")
# Keras' progress bar redraws itself with carriage returns: one line per epoch (verbose=2) reads better in a log.
progress_option = click.option("--progress/--no-progress", default=lambda: sys.stdout.isatty(),
                               show_default="when stdout is a terminal",
                               help="Keras' progress bar per step; without it, one line per epoch.")
set_option = click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                          help="Override a config key, e.g. --set train.epochs=3 (repeatable).")


def _load(config_path: Path, overrides):
    from train.config import ConfigError, load_config

    try:
        return load_config(config_path, overrides)
    except ConfigError as err:
        raise click.ClickException(str(err)) from None


def _user_errors():
    from train.config import ConfigError
    from train.data import DataError
    from train.runs import TrainError

    return (ConfigError, DataError, TrainError, FileNotFoundError)


def _assertion_text(message: str) -> str:
    """The user-facing part of a failed in-graph check: 'assertion failed: [text]' → 'text'."""
    for line in message.splitlines():
        _, marker, text = line.partition("assertion failed: [")
        if marker:
            return text.rsplit("]", 1)[0].strip()
    return message.strip().splitlines()[-1] if message.strip() else "invalid data"


def _run(action):
    """Run ``action`` turning the user's problems (config, data, model files) into one clean message."""
    import tensorflow as tf

    try:
        return action()
    except _user_errors() as err:
        raise click.ClickException(str(err)) from None
    except tf.errors.InvalidArgumentError as err:
        # In-graph data checks (mask colour outside rgb_map, tile size) name the file in their message.
        raise click.ClickException(f"bad data: {_assertion_text(err.message or str(err))}") from None
    except OSError as err:  # a folder that cannot be written, a disk that is full: name the path, no traceback
        where = f"{err.filename}: " if err.filename else ""
        raise click.ClickException(f"{where}{err.strerror or err}") from None
    except KeyboardInterrupt as err:
        click.echo(str(err) or "interrupted: the last finished epoch is kept; run the same command to resume (or add "
                   "--fresh to start again)", err=True)
        sys.exit(130)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def cli() -> None:
    """Train and evaluate FlexUNet on the prep tile dataset."""
    warnings.showwarning = show_warning


@cli.command("fit")
@config_option
@set_option
@click.option("--overwrite", is_flag=True,
              help="Replace a finished model in [train] model_dir (kept until the new run has finished, and put back "
                   "if it fails).")
@click.option("--fresh", is_flag=True,
              help="Discard an interrupted run (its backup/ and its epochs' weights) and start from epoch 1 instead of "
                   "resuming.")
@progress_option
def fit_command(config_path: Path, overrides, overwrite: bool, fresh: bool, progress: bool) -> None:
    """Train from a config; a killed run resumes at its last finished epoch when run again."""
    config = _load(config_path, overrides)
    from train.fit import fit

    summary = _run(lambda: fit(config, overwrite=overwrite, verbose=1 if progress else 2, fresh=fresh))
    click.echo(f"{'resumed and ' if summary['resumed'] else ''}trained {summary['epochs']} epoch(s) in "
               f"{summary['seconds']:.0f} s on {summary['replicas']} replica(s) at {summary['precision']}; "
               f"best val_loss {summary['best_val_loss']:.4f}")
    click.echo(f"model: {summary['model_dir']}   curves and CSVs: {summary['eval_dir']}")


@cli.command("evaluate")
@config_option
@set_option
@click.option("--overwrite", is_flag=True, help="Replace an existing evaluation.csv.")
@progress_option
def evaluate_command(config_path: Path, overrides, overwrite: bool, progress: bool) -> None:
    """Score the best model on [test]: evaluation.csv (reference rows first) and per-tile scores."""
    config = _load(config_path, overrides)
    from train.evaluate import evaluate

    result = _run(lambda: evaluate(config, overwrite=overwrite, verbose=1 if progress else 2))
    width = max(len(name) for name, _ in result["rows"])
    for name, value in result["rows"]:
        click.echo(f"  {name:<{width}}  {value:.4f}" if isinstance(value, float) else f"  {name:<{width}}  {value}")
    click.echo(f"{result['tiles']} test tile(s); wrote {result['evaluation_csv']} and {result['per_image_csv']}")
    click.echo("trust nucleus_dice / object_f1 / fnro: dice_coef_multiclass pools background and is inflated")


@cli.command("summary")
@config_option
@set_option
def summary_command(config_path: Path, overrides) -> None:
    """Build the model, print its layers and parameter count, check the data folders; trains nothing."""
    config = _load(config_path, overrides)
    from train.model import build_model

    model = _run(lambda: build_model(config))
    model.summary(print_fn=lambda line, **_: click.echo(line))
    click.echo(f"total parameters: {model.count_params():,}")
    for section in ("train", "valid", "test"):
        part = getattr(config, section)
        for key in ("images_dir", "masks_dir"):
            folder = getattr(part, key)
            if not Path(folder).is_dir():
                click.echo(f"warning: [{section}] {key}: {folder} does not exist", err=True)


def main() -> None:
    cli(prog_name="train")


if __name__ == "__main__":
    main()
