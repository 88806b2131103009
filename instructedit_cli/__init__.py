"""``instructedit``: the project's command line, one module per command group.

It sits above every package: ``serve`` starts ``service``; ``data``, ``train`` and
``evaluate`` drive ``editor_lab``; ``build`` chains them into one resumable build of a
shipped editor; ``bench`` runs ``bench``; ``importing`` reads editors trained elsewhere into
``editor_core``'s format; ``edits`` exports and imports the edit store.
"""

from __future__ import annotations

# Each import registers its commands, listed in this order; build's come after those it chains.
from . import bench, data, edits, evaluate, importing, serve, train  # noqa: F401

# isort: split
from . import build  # noqa: F401
from .app import app

__all__ = ["app", "main"]


def main() -> None:
    app()
