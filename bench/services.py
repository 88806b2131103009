"""Services a benchmark starts and the edits it posts to them, alternating.

Each service is ``instructedit serve`` in its own process with its own embedded Redis.
Posting every edit to each service in turn, and alternating which goes first, makes drift
of a shared machine hit every side alike, so only their differences are left.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def serve(root: Path, data: Path, port: int, *options: str) -> subprocess.Popen:
    """``instructedit serve`` from ``root`` (whichever module held the CLI then), logging
    beside ``data``."""
    module = "instructedit_cli" if (root / "instructedit_cli").is_dir() else "service.cli"
    env = dict(os.environ, PYTHONPATH=str(root), OMP_WAIT_POLICY="PASSIVE")
    log = (data.parent / f"{data.name}.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", module, "serve", "--port", str(port),
                             "--data-dir", str(data), "--threads", "1", *options],
                            cwd=root, env=env, stdout=log, stderr=log)


def wait_ready(base: str, timeout: float = 300) -> None:
    """Until ``base``'s ``/readyz`` answers 200 (a hang guard of ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{base} did not become ready")


@contextmanager
def running(sides: Mapping[str, tuple[Path, tuple[str, ...]]], data: Path, first_port: int
            ) -> Iterator[dict[str, str]]:
    """Each side (its code's root and serve options) served and ready; yields each side's
    base URL, and stops them all on the way out."""
    procs, bases = [], {}
    try:
        for i, (name, (root, options)) in enumerate(sides.items()):
            port = first_port + i
            procs.append(serve(root, data / f"data-{i}", port, *options))
            bases[name] = f"http://127.0.0.1:{port}"
        for base in bases.values():
            wait_ready(base)
        yield bases
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)


def alternating_posts(client: httpx.Client, bases: Mapping[str, str], bodies: Iterable[dict]
                      ) -> Iterator[tuple[int, str, float, dict]]:
    """``(i, side, ms, reply)`` for edit ``i`` posted to every side, the order reversed for
    every other edit."""
    for i, body in enumerate(bodies):
        order = list(bases) if i % 2 == 0 else list(reversed(bases))
        for name in order:
            start = time.perf_counter()
            reply = client.post(bases[name] + "/edits", json=body).json()
            yield i, name, (time.perf_counter() - start) * 1e3, reply
