"""What the three command lines share: warnings as one plain line each, and the command line a record names."""

from __future__ import annotations

import shlex
import sys

import click


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the CLIs: 'warning: …' on stderr, without Python's file:line prefix."""
    click.echo(f"warning: {message}", err=True)


class _KeepsItsArguments:
    """A click command that remembers the arguments ``main`` was given: the benches call the CLIs in-process
    (``cli.main([...])``), where ``sys.argv`` is the bench's, not the command that ran. A caller that skips ``main``
    (``make_context`` + ``invoke``) leaves the last call's arguments here."""

    invoked_args: tuple[str, ...] = ()

    def main(self, args=None, *rest, **options):
        self.invoked_args = tuple(sys.argv[1:] if args is None else args)
        return super().main(args, *rest, **options)

    def command_line(self, program: str) -> str:
        """The command as a shell would run it, for prep.json and infer.json."""
        return shlex.join([program, *self.invoked_args])


class RecordedGroup(_KeepsItsArguments, click.Group):
    pass


class RecordedCommand(_KeepsItsArguments, click.Command):
    pass
