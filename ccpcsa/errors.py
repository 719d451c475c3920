"""User-facing errors.

A :class:`UserError` is a mistake the user can fix (bad path, unknown name, wrong value). Its
message is one line that names the thing and says what to do; command-line entry points print it
as ``error: <message>`` and exit non-zero, without a traceback. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable


class UserError(Exception):
    """A one-line, actionable error caused by user input (not a bug)."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def closest(name: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""`` if none is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def unknown(kind: str, name: str, choices: Iterable[str]) -> UserError:
    """Build the standard 'unknown <kind>' error listing the valid choices."""
    options = sorted(choices)
    return UserError(f"unknown {kind} '{name}'{closest(name, options)}; known: {', '.join(options)}")


def run_cli(body: Callable[[], int], interrupted: str = "interrupted") -> int:
    """Run a command-line body: a :class:`UserError` becomes one ``error: …`` line on stderr and its exit
    code (2); Ctrl-C prints ``interrupted`` and returns 130. Other exceptions are bugs and propagate."""
    import sys

    try:
        return body()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
