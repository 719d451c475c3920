"""``python -m ccpcsa.oneshot`` — the documented one-shot pruning command. The code lives in
:mod:`ccpcsa.pruning.oneshot` (this file is only the command's old name, kept so the command keeps working)."""

from __future__ import annotations

from .pruning.oneshot import main

if __name__ == "__main__":
    raise SystemExit(main())
