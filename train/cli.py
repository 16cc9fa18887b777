"""`train` command line. Its commands arrive with issue #3; until then it only says so."""

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Not implemented yet (issue #3): this group has no commands."""


def main() -> None:
    cli(prog_name="train")
