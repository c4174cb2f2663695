"""The `bertpld` command line: a thin map from each command to one typed function.

Each command parses its options, resolves its config (defaults < config file < --set < options)
and calls one function. User mistakes raise `BertpldError` and are printed as one line.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from bertpld import __version__
from bertpld.errors import BertpldError

app = typer.Typer(
    name="bertpld",
    help="Pre-train BERT with Progressive Layer Dropping (PLD) and measure what it saves.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override any config field: section.field=value (repeatable)."),
]
ConfigOpt = Annotated[
    str | None,
    typer.Option("--config", "-c", help="Config file: a path, or a name in configs/ (e.g. demo)."),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bertpld {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Pre-train BERT with Progressive Layer Dropping (PLD) and measure what it saves."""


def _options(section: str, **values: Any) -> dict[str, dict[str, Any]]:
    """Dedicated command-line options as a config layer; options left unset are skipped."""
    return {section: {k: v for k, v in values.items() if v is not None}}


def _merge(*layers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for section, values in layer.items():
            out.setdefault(section, {}).update(values)
    return out


# ---------------------------------------------------------------------------------------------
# bertpld prepare


# ---------------------------------------------------------------------------------------------
# bertpld pretrain


# ---------------------------------------------------------------------------------------------
# bertpld finetune


# ---------------------------------------------------------------------------------------------
# bertpld report


# ---------------------------------------------------------------------------------------------
# bertpld export


def main() -> None:
    try:
        app()
    except BertpldError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()


__all__ = ["app", "main", "Path"]
