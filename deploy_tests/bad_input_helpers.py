"""Helpers of the bad-input battery (:mod:`deploy_tests.test_bad_input`, :mod:`deploy_tests.test_bad_input_files`): one
``error:`` line, run the way the entry points run, nothing written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ccpcsa.errors import run_cli

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
TINY = "deploy_tests.byo_model:tiny_net"


def one_error_line(capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    """Assert stderr holds exactly one non-empty line, ``error: …``, containing every fragment; return it."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def cli_error(capsys: pytest.CaptureFixture[str], body: Callable[[], Any], *fragments: str) -> str:
    """Run ``body`` the way every entry point does (inside ``run_cli``); assert exit 2 and one error line."""
    capsys.readouterr()

    def wrapped() -> int:
        body()
        return 0

    assert run_cli(wrapped) == 2, "expected a UserError (exit 2)"
    return one_error_line(capsys, *fragments)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` (relative path → bytes), to prove nothing was written or overwritten."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def no_temp_files(directory: Path) -> None:
    """No ``.NAME.*.tmp`` leftovers of an interrupted atomic write."""
    assert not list(directory.glob(".*.tmp")), list(directory.iterdir())
