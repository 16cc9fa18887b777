"""The house rules that keep the code navigable: no import circle between the project's modules (lazy imports
inside functions count too), and no source file so long that a reader loses its thread."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("prep", "train", "infer")
MAX_LINES = 450


def modules() -> dict[str, Path]:
    return {".".join(path.relative_to(REPO).with_suffix("").parts): path
            for package in PACKAGES for path in sorted((REPO / package).glob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules ``path`` imports anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {name for name in names if name in known}
    return found


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    state: dict[str, int] = {}
    trail: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        trail.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                return [*trail[trail.index(target):], target]
            if target not in state and (found := visit(target)):
                return found
        state[name] = 2
        trail.pop()
        return None

    for name in sorted(graph):
        if name not in state and (found := visit(name)):
            return found
    return None


def test_no_module_imports_itself_back_through_others():
    known = set(modules())
    graph = {name: imports_of(path, known) - {name} for name, path in modules().items()}
    graph = {name: {t for t in targets if not t.endswith("__init__")} for name, targets in graph.items()}
    assert cycle(graph) is None, " → ".join(cycle(graph))


def test_the_cycle_finder_finds_one():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_no_source_file_is_too_long_to_read():
    long = {name: lines for name, path in modules().items()
            if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines: {long}"


def test_the_layers_point_one_way():
    """prep ← train ← infer: prep (no TensorFlow) never imports train or infer, train never imports infer."""
    known = set(modules())
    for name, path in modules().items():
        targets = imports_of(path, known)
        if name.startswith("prep."):
            assert not {t for t in targets if not t.startswith("prep")}, (name, targets)
        if name.startswith("train."):
            assert not {t for t in targets if t.startswith("infer")}, (name, targets)


# What the consumers of a trained model may see of the train wing (docs/design.md §1): infer only the config, the
# model's face and the numpy scores; evaluate those plus the data face, whose adapter feeds it the test tiles through
# the pipeline that validated the run.
TRAIN_FACES = {"infer": {"train.config", "train.model", "train.scores"},
               "train.evaluate": {"train.config", "train.model", "train.scores", "train.data"}}


def modules_used(path: Path, wing: str) -> set[str]:
    """The modules of ``wing`` that ``path`` imports (``from train.x import y`` and ``import train.x`` alike)."""
    return {name for name in imports_of(path, set(modules())) if name.startswith(f"{wing}.")}


def test_evaluate_and_infer_see_only_the_train_wings_faces():
    for name, path in modules().items():
        consumer = "infer" if name.startswith("infer.") else name
        if consumer in TRAIN_FACES:
            used = modules_used(path, "train")
            assert used <= TRAIN_FACES[consumer], (name, sorted(used - TRAIN_FACES[consumer]))


# What train and infer may use of prep (docs/design.md §1): train its image conventions, console and checksums; infer
# also its GT reading and atomic output folders. Tiling, augmentation and the dataset writer stay prep's own.
PREP_FACES = {"train": {"prep.imageio", "prep.console", "prep.edf"},
              "infer": {"prep.imageio", "prep.console", "prep.edf", "prep.truth", "prep.atomic"}}


def test_train_and_infer_see_only_preps_faces():
    for name, path in modules().items():
        wing = name.split(".")[0]
        if wing in PREP_FACES:
            used = modules_used(path, "prep")
            assert used <= PREP_FACES[wing], (name, sorted(used - PREP_FACES[wing]))


def test_the_face_check_sees_a_lazy_private_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\n\ndef f():\n    from train.runs import run_paths\n")
    assert modules_used(module, "train") == {"train.runs"}


def test_every_option_of_every_command_says_what_it_does():
    import click

    from infer.cli import cli as infer_cli
    from infer.merge import main as merge_cli
    from prep.cli import cli as prep_cli
    from train.cli import cli as train_cli

    commands = {"infer": infer_cli, "python -m infer.merge": merge_cli}
    for group_name, group in (("prep", prep_cli), ("train", train_cli)):
        commands.update({f"{group_name} {name}": command for name, command in group.commands.items()})
    silent = [f"{name} {param.opts[0]}" for name, command in commands.items() for param in command.params
              if isinstance(param, click.Option) and not (param.help or "").strip()]
    assert not silent, silent
