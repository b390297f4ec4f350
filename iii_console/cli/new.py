"""``iii-console new NAME``: start a project of your own."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("new")
@click.argument("name")
def new(name: str) -> None:
    """Create project NAME: an HTTP step feeding a queue step, iii-config.yaml, a test, .gitignore, a README."""
    from iii_console.scaffold import create

    target = Path(name).resolve()
    written = create(target)
    click.echo(
        f"created {name}/ ({len(written)} files). Next:\n  cd {name}\n  iii-console        # run it\n"
        "  python -m pytest   # test it"
    )
