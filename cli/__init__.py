"""The ``mixrec`` command line: the composition root.

Each package owns its verbs and adds them here (``register(app)``, as Ray, MLflow and Feast let each library
own its commands); the verbs that span packages (``demo``, ``promote``) live in this package. This is the only
package that may import all the others.
"""

from __future__ import annotations

import sys
import warnings
from typing import Annotated

import typer

from mixrec.pipelines import cli as pipelines_cli
from mixrec.pipelines.runtime import quiet_environment, set_verbose
from mixrec.serving import cli as serving_cli
from mixrec.tuning import cli as tuning_cli

from . import demo, promote
from .errors import DEBUG_KEY, ErrorReportingGroup

# Once, before any verb imports the stack: usage reporting, progress bars and library warnings off.
quiet_environment()
for _category in (FutureWarning, DeprecationWarning, UserWarning):
    warnings.filterwarnings("ignore", category=_category)

app = typer.Typer(cls=ErrorReportingGroup, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="mixrec: Feast -> Ray Data + Great Expectations -> Ray Train -> MLflow -> Ray Serve A/B.")


def version_line() -> str:
    """``mixrec X (Python Y; ray ..., mlflow ..., feast ..., torch ...)``: read from the installed metadata."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    stack = ", ".join(f"{name} {installed(name)}" for name in ("ray", "mlflow", "feast", "torch"))
    return f"mixrec {installed('mixrec')} (Python {sys.version.split()[0]}; {stack})"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(version_line())
        raise typer.Exit()


@app.callback()
def root(ctx: typer.Context,
         debug: Annotated[bool, typer.Option("--debug", help="show tracebacks instead of one-line errors")] = False,
         verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show the stack's own output (Ray, Feast, "
                                               "Great Expectations, MLflow logs, warnings and progress bars)")] = False,
         _version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                help="print the versions of mixrec and its stack")] = False) -> None:
    """mixrec: Feast -> Ray Data + Great Expectations -> Ray Train -> MLflow -> Ray Serve A/B.

    Errors are one line on stderr; exit 2: bad input, 1: a failed run, 3: a server cannot be reached."""
    ctx.meta[DEBUG_KEY] = debug
    if verbose:
        set_verbose()


demo.register(app)
pipelines_cli.register(app)
promote.register(app)
serving_cli.register(app)
tuning_cli.register(app)


def main() -> None:
    app(prog_name="mixrec")
