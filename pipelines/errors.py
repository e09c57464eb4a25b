"""The error convention of every ``mixrec`` verb: the exception's type decides the exit status.

Code anywhere below the command line raises one of these (or a library error the root classifies the same way,
see ``mixrec.cli.errors``); the root prints ``error: <message>`` on one line, and a traceback only with
``--debug``. Messages name what is wrong: the file, the field, the value.
"""

from __future__ import annotations

EXIT_FAILED = 1  # a run that started and failed
EXIT_BAD_INPUT = 2  # a file, field or value the user gave cannot be used
EXIT_UNREACHABLE = 3  # a server (MLflow, Ray, the served endpoint) cannot be reached


class MixrecError(Exception):
    """Base of mixrec's errors; ``exit_code`` is the command's exit status."""

    exit_code = EXIT_FAILED


class BadInput(MixrecError, ValueError):
    """Bad input: a config field, a data file, a command-line value."""

    exit_code = EXIT_BAD_INPUT


class RunFailed(MixrecError, RuntimeError):
    """A run that started and failed (a validation gate, a training failure, a refused promotion)."""

    exit_code = EXIT_FAILED


class Unreachable(MixrecError, ConnectionError):
    """A server that does not answer: the served endpoint, an MLflow server, a Ray cluster."""

    exit_code = EXIT_UNREACHABLE
