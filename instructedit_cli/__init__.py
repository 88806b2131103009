"""``instructedit``: the project's command line, one module per command group.

It sits above every package: ``serve`` starts ``service``; ``data``, ``train`` and
``evaluate`` drive ``editor_lab``; ``bench`` runs ``bench``; ``importing`` reads editors
trained elsewhere into ``editor_core``'s format.
"""

from __future__ import annotations

from . import bench, data, evaluate, importing, serve, train  # noqa: F401  (registers commands)
from .app import app

__all__ = ["app", "main"]


def main() -> None:
    app()
