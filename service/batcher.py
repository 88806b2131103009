"""Generations decoded together: concurrent requests share each forward pass.

One worker thread owns generation. It takes the first waiting request, gathers whatever
else arrives within ``generation_batch_window_ms`` (up to ``generation_batch_size``), and
decodes them as one batch (``generate_together``) under the ledger's read lock — so a wave
sees one version of the weights, reported to all its requests. Requests that arrive during
a wave form the next. A step costs little more for eight sequences than for one, which is
where concurrent clients' throughput comes from; a lone request decodes as before.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from editor_core.generation import TokenStream, generate_together
from editor_core.ledger import WeightLedger

from .settings import ServiceSettings, default


@dataclass(frozen=True)
class Finished:
    """The end of a request: the weights' version that produced it and its seconds."""

    version: int
    seconds: float


@dataclass
class _Job:
    stream: TokenStream
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)

    def post(self, item: str | Finished | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, item)


class GenerationBatcher:
    """Decode requests in waves of up to ``generation_batch_size``, gathered for
    ``generation_batch_window_ms`` (the settings of those names)."""

    def __init__(self, model, ledger: WeightLedger,
                 generation_batch_size: int = default(ServiceSettings, "generation_batch_size"),
                 generation_batch_window_ms: float = default(
                     ServiceSettings, "generation_batch_window_ms")) -> None:
        self.model = model
        self.ledger = ledger
        self.generation_batch_size = generation_batch_size
        self.generation_batch_window_ms = generation_batch_window_ms
        self._waiting: queue.Queue[_Job | None] = queue.Queue()
        self._worker = threading.Thread(target=self._serve, name="generation", daemon=True)
        self._worker.start()

    async def stream(self, stream: TokenStream) -> AsyncIterator[str | Finished]:
        """The request's text as it is produced, then ``Finished``. A consumer that stops
        early (the client left) cancels its sequence."""
        job = _Job(stream, asyncio.get_running_loop())
        self._waiting.put(job)
        try:
            while True:
                item = await job.events.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Finished):
                    return
        finally:
            stream.cancel()

    async def run(self, stream: TokenStream) -> Finished:
        """Generate to the end."""
        async for item in self.stream(stream):
            if isinstance(item, Finished):
                return item
        raise RuntimeError("the generation ended without finishing")

    def close(self) -> None:
        self._waiting.put(None)
        self._worker.join(timeout=30)

    def _gather(self, first: _Job) -> list[_Job]:
        wave, deadline = [first], time.monotonic() + self.generation_batch_window_ms / 1000
        while len(wave) < self.generation_batch_size:
            try:
                job = self._waiting.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:  # closing: finish this wave first
                self._waiting.put(None)
                break
            wave.append(job)
        return wave

    def _serve(self) -> None:
        while (first := self._waiting.get()) is not None:
            wave = self._gather(first)
            start = time.perf_counter()
            try:
                with self.ledger.reading():
                    version = self.ledger.version
                    for index, piece in generate_together(self.model,
                                                          [j.stream for j in wave]):
                        job = wave[index]
                        if piece:
                            job.post(piece)
                        if job.stream.done:
                            job.post(Finished(version, time.perf_counter() - start))
            except Exception as exc:  # every request of the wave learns of it
                for job in wave:
                    if not job.stream.done:
                        job.post(exc)
