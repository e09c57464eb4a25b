"""The root's error classifier: any exception a verb raises becomes one ``error: ...`` line and an exit status
(:mod:`mixrec.pipelines.errors`: 2 bad input, 1 a failed run, 3 an unreachable server); ``--debug`` (or
``MIXREC_DEBUG=1``) lets the traceback through instead.

mixrec's own errors carry their status. Library errors are classified by what they are, looking through the
chain of causes (Ray wraps a worker's exception, MLflow wraps the HTTP client's): a refused or failed
connection is 3, a missing file or a ``ValueError`` (a bad value in a config or data file) is 2, anything
else 1.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import click
import typer
from typer.core import TyperGroup

from mixrec.pipelines.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_UNREACHABLE

DEBUG_KEY = "mixrec.debug"
MAX_MESSAGE = 600  # characters of one error line
# Class names (anywhere in the MRO) of connection failures of the HTTP clients under httpx, requests, MLflow, Ray.
UNREACHABLE_NAMES = {"ConnectionError", "ConnectError", "ConnectTimeout", "NewConnectionError", "MaxRetryError",
                     "gaierror"}


def causes(err: BaseException) -> Iterator[BaseException]:
    """``err`` and what caused it, outermost first: ``__cause__`` / ``__context__``, a Ray task's ``cause``, a
    Ray Train worker group's first worker failure."""
    seen: set[int] = set()
    todo = [err]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        inner = getattr(e, "cause", None) or getattr(e, "controller_failure", None)
        failures = getattr(e, "worker_failures", None)
        if isinstance(failures, dict) and failures:
            inner = inner or next(iter(failures.values()))
        todo.extend(c for c in (inner, e.__cause__, e.__context__) if isinstance(c, BaseException))


# Ray's wrappers of a task's, a Ray Data UDF's or a Train worker's exception: their text is a remote traceback,
# and their cause says it better.
RAY_WRAPPERS = {"UserCodeException", "WorkerGroupError", "ControllerError", "TrainingFailedError"}


def _wrapper(e: BaseException) -> bool:
    return type(e).__name__.startswith("RayTaskError") or type(e).__name__ in RAY_WRAPPERS


def one_line(text: str) -> str:
    """A message on one line: ``heading:\\n  - a\\n  - b`` -> ``heading: a; b``; at most MAX_MESSAGE chars."""
    lines = [ln.strip().removeprefix("- ").strip() for ln in str(text).splitlines()]
    lines = [ln for ln in lines if ln]
    out = ""
    for ln in lines:
        out += ln if not out else (" " if out.endswith(":") else "; ") + ln
    return out if len(out) <= MAX_MESSAGE else out[: MAX_MESSAGE - 3] + "..."


def _message(e: BaseException) -> str:
    text = one_line(str(e))
    if isinstance(e, OSError) and e.filename and str(e.filename) not in text:
        text = f"{e.filename}: {text}"
    return text or type(e).__name__


def _unreachable(e: BaseException) -> bool:
    return any(c.__name__ in UNREACHABLE_NAMES for c in type(e).__mro__)


def classify(err: BaseException) -> tuple[int, str]:
    """(exit status, one-line message) for an exception a verb raised."""
    chain = [e for e in causes(err) if not _wrapper(e)] or [err]
    for e in chain:
        code = getattr(e, "exit_code", None)
        if isinstance(code, int) and not isinstance(e, click.exceptions.Exit):
            return code, _message(e)
    for e in chain:
        if _unreachable(e):
            outer = _message(chain[0])
            inner = _message(e)
            return EXIT_UNREACHABLE, "cannot reach the server: " + (outer if inner in outer else f"{outer} ({inner})")
    for e in chain:
        if isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
            return EXIT_BAD_INPUT, _message(e)
    first = chain[0]
    if isinstance(first, ValueError):
        return EXIT_BAD_INPUT, _message(first)
    return EXIT_FAILED, f"{type(first).__name__}: {_message(first)} (mixrec --debug ... shows the traceback)"


def debug_enabled(ctx: click.Context | None = None) -> bool:
    return bool((ctx and ctx.meta.get(DEBUG_KEY)) or os.environ.get("MIXREC_DEBUG", "") not in ("", "0"))


class ErrorReportingGroup(TyperGroup):
    """The root command: a verb's exception becomes ``error: <message>`` on stderr and its exit status."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, typer.Exit, KeyboardInterrupt):
            raise
        except Exception as err:
            if debug_enabled(ctx):
                raise
            code, message = classify(err)
            typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code) from None
