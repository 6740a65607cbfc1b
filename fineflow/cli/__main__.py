"""`python -m fineflow.cli`: the same CLI as the `fineflow` command."""

from fineflow.cli import app

app()
