"""The ``mixrec`` command line: the composition root.

Each package owns its verbs and adds them here (``register(app)``, as Ray, MLflow and Feast let each library
own its commands); the verbs that span packages (``demo``, ``promote``) live in this package. This is the only
package that may import all the others.
"""

from __future__ import annotations

import sys
import warnings

import typer

from mixrec.pipelines import cli as pipelines_cli
from mixrec.pipelines.config import ConfigError
from mixrec.pipelines.runtime import quiet_environment, set_verbose
from mixrec.serving import cli as serving_cli
from mixrec.tuning import cli as tuning_cli

from . import demo, promote

# Once, before any verb imports the stack: usage reporting, progress bars and library warnings off.
quiet_environment()
for _category in (FutureWarning, DeprecationWarning, UserWarning):
    warnings.filterwarnings("ignore", category=_category)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="mixrec: Feast -> Ray Data + Great Expectations -> Ray Train -> MLflow -> Ray Serve A/B.")


@app.callback()
def _options(verbose: bool = typer.Option(False, "--verbose", "-v", help="show the stack's own output (Ray, "
                                          "Feast, Great Expectations, MLflow logs, warnings and progress bars)")) -> None:
    if verbose:
        set_verbose()


demo.register(app)
pipelines_cli.register(app)
promote.register(app)
serving_cli.register(app)
tuning_cli.register(app)


def main() -> None:
    try:
        app()
    except ConfigError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)
