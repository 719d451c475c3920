"""User-facing errors.

A :class:`UserError` is a mistake the user can fix (bad path, unknown name, wrong value). Its
message is one line that names the thing and says what to do; command-line entry points print it
as ``error: <message>`` and exit non-zero, without a traceback. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import sys
from collections.abc import Callable, Iterable
from typing import NoReturn


def first_line(exc: BaseException, *, with_type: bool = False, limit: int = 300) -> str:
    """The first non-empty line of ``exc``'s message, at most ``limit`` characters — its type name when the message is
    empty; ``with_type``: prefixed ``Type: `` (for messages that name a foreign failure, e.g. a runtime's)."""
    text = str(exc).strip()
    line = text.splitlines()[0][:limit] if text else ""
    if with_type:
        return f"{type(exc).__name__}: {line}" if line else type(exc).__name__
    return line or type(exc).__name__


class UserError(Exception):
    """A one-line, actionable error caused by user input (not a bug)."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class ArtifactWriteError(UserError, OSError):
    """Writing an artifact failed for a reason the user can fix (disk full, quota, read-only place).

    It is both a :class:`UserError` (command-line entry points print it as one line) and an
    :class:`OSError` (code that tolerates a failed optional write, like the data cache, still catches it).
    """

    def __init__(self, message: str, err: int | None = None) -> None:
        super().__init__(message)
        self.errno = err

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
NOT_WRITABLE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR})


def write_error(exc: BaseException, dest: object) -> ArtifactWriteError | None:
    """Translate a failed write of ``dest`` into an :class:`ArtifactWriteError`, or ``None`` for other errors.

    Disk full (``ENOSPC``/``EDQUOT``, also when a library reports it as a ``RuntimeError`` whose text says
    "No space left on device") and permission / read-only / not-a-directory errors are user-fixable.
    """
    if isinstance(exc, ArtifactWriteError):
        return exc
    code = exc.errno if isinstance(exc, OSError) else None
    if code in DISK_FULL_ERRNOS or "No space left on device" in str(exc):
        return ArtifactWriteError(
            f"no space left on device while writing {dest}; free some space and rerun "
            "(any previous version of it is intact)",
            errno.ENOSPC,
        )
    if code in NOT_WRITABLE_ERRNOS:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not writable"
        return ArtifactWriteError(
            f"cannot write {dest} ({why}); choose a writable location (any previous version of it is intact)",
            code,
        )
    return None


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
    try:
        return body()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130


class CliParser(argparse.ArgumentParser):
    """``argparse`` parser whose usage errors follow the project convention: one ``error: …`` line on
    stderr (pointing at ``--help``) and exit status 2, instead of the usage block plus the message."""

    def error(self, message: str) -> NoReturn:
        """Print ``error: <message>; see <prog> --help`` and exit with status 2."""
        print(f"error: {' '.join(message.split())}; see {self.prog} --help", file=sys.stderr)
        raise SystemExit(2)
