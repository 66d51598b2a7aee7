"""The ``celltally`` command line. Each command parses its options, calls one library function
and prints; ``common.reports_errors`` turns bad input into the one-line error and exit code 2."""

from celltally.cli.common import app
from celltally.cli.count import count, models
from celltally.cli.evaluation import calibrate, evaluate
from celltally.cli.explain import explain_app
from celltally.cli.training import benchmark, synth, train

for command in (count, train, synth, evaluate, calibrate, benchmark):
    app.command()(command)
app.add_typer(explain_app, name="explain")
app.command()(models)

__all__ = ["app"]
