"""``${NAME}`` references in config files: filled from the environment when a file is read, and put back
wherever the config leaves the process (MLflow params, tags and artifacts; the generated
``feature_store.yaml``, which Feast expands itself), so a secret is never written in clear.

The values are remembered per process: every config, study or dataset file this process read contributes.
"""

from __future__ import annotations

import os
import re
from typing import Any

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Values shorter than this are put back only where they are a whole string (a 2-character secret would
# otherwise turn every "2" of a logged config into a reference).
MIN_SUBSTRING_LEN = 6
_filled: dict[str, str] = {}  # value -> "${NAME}"


def env_refs(text: str) -> list[str]:
    """The variable names ``text`` refers to as ``${NAME}``, sorted, without repeats."""
    return sorted(set(_ENV_REF.findall(text)))


def fill_env(text: str) -> str:
    """``text`` with every ``${NAME}`` replaced by the environment's value (all must be set), remembering
    each value so :func:`redact` can put the reference back."""

    def fill(match: re.Match) -> str:
        value = os.environ[match.group(1)]
        if value:
            _filled[value] = match.group(0)
        return value

    return _ENV_REF.sub(fill, text)


def redact(obj: Any) -> Any:
    """``obj`` (str, or dicts / lists of them, as JSON) with every value that came from a ``${NAME}``
    reference replaced by that reference again; other values unchanged."""
    if isinstance(obj, str):
        if obj in _filled:
            return _filled[obj]
        for value, ref in sorted(_filled.items(), key=lambda kv: -len(kv[0])):
            if len(value) >= MIN_SUBSTRING_LEN:
                obj = obj.replace(value, ref)
        return obj
    if isinstance(obj, dict):
        return {k: redact(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    return obj
