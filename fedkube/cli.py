"""The `fedkube` command line (typer)."""

from __future__ import annotations

import typer

app = typer.Typer(help="fedkube: Kubernetes-native federated learning.", no_args_is_help=True)


def main() -> None:
    app()
