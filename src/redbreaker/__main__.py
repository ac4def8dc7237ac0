"""``python -m redbreaker``: the ``redbreaker`` command (try ``python -m redbreaker demo``)."""

from __future__ import annotations

from ._cli import main

if __name__ == "__main__":  # the demo's spawned workers import this module under another name
    raise SystemExit(main())
