"""What the three command lines share on the terminal: warnings as one plain line each."""

from __future__ import annotations

import click


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the CLIs: 'warning: …' on stderr, without Python's file:line prefix."""
    click.echo(f"warning: {message}", err=True)
