"""The README is a guide a newcomer reads on one sitting: short, its first screen the two commands, and every
make target, file and doc it names real."""

from __future__ import annotations

import re

from tests.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
MAX_LINES = 200
FIRST_SCREEN = 25


def test_it_is_short_and_opens_with_the_two_commands():
    lines = README.splitlines()
    assert len(lines) <= MAX_LINES, f"README.md has {len(lines)} lines (at most {MAX_LINES}: the rest goes in docs/)"
    first = "\n".join(lines[:FIRST_SCREEN])
    assert "make demo" in first and "make test" in first


def test_every_make_target_it_names_exists():
    targets = set(re.findall(r"^([a-z][a-z-]*):", (REPO / "Makefile").read_text(), re.MULTILINE))
    named = set(re.findall(r"\bmake ([a-z][a-z-]+)", README))
    assert named and named <= targets, sorted(named - targets)


def test_every_doc_and_config_it_names_exists():
    paths = set(re.findall(r"`((?:docs|configs|bench)/[\w./-]+\.(?:md|config|py|csv))`", README))
    assert paths, "no docs/ configs/ bench/ path found: the pattern is stale"
    missing = sorted(p for p in paths if not (REPO / p).is_file())
    assert not missing, missing
