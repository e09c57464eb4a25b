"""``python -m mixrec.cli``: the same command as ``mixrec`` (the Ray Job entrypoint uses it)."""

from . import main

main()
