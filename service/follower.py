"""Following the edit log: every replica's live weights are the log, applied in order.

The Redis stream ``{p}:log`` is the single source of truth. A replica starts from a
snapshot — the active edits right after a version at which the combined weights depend on
the active set alone (``DeltaCombiner.exact_version``) — and then applies every later
event in log order, its own edits included. A merged combination's exact sums are costly
to rebuild from every edit, so at such versions (every ``snapshot_every``) one replica saves
them, and a replica that starts there solves from them; the edit memory is built from its
stored edits alone and saves nothing. Every replica therefore
performs the same weight changes in the same order and holds the same weights bit for bit,
whichever replica an edit was posted to, and however late it joined.

A failover can lose the newest changes (those no replica had yet): a replica whose last
applied event is no longer in the log, or whose weights are newer than the store, rebuilds
from the store as it is.

Events of one change share its version (a superseding edit rolls the old one back in the
same change; a rollback to a version removes many at once), so events are applied a whole
version at a time. The caller holds the engine's change lock around ``start`` and
``sync``; the background ``run`` loop only waits for news outside it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from editor_core.combination import ActiveEdit
from editor_core.delta import EditDelta
from editor_core.ledger import LedgerError, WeightLedger

from .metrics import ServiceMetrics
from .settings import ServiceSettings, default
from .store import LOG_PAGE, EditStore, LogRead, StoreError

log = logging.getLogger(__name__)

@dataclass
class _Change:
    """The log events of one version: edits removed, and the edit applied (if any)."""

    version: int
    removed: list[str] = field(default_factory=list)
    applied: str | None = None


class LogFollower:
    """Keeps one ledger in step with the store's log."""

    def __init__(self, ledger: WeightLedger, store: EditStore, metrics: ServiceMetrics,
                 snapshot_every: int = default(ServiceSettings, "snapshot_every")) -> None:
        self.ledger = ledger
        self.snapshot_every = snapshot_every
        self.store = store
        self.metrics = metrics
        self.position = "0-0"  # stream id of the last event applied
        self.store_version = 0  # the store's newest version, as last seen
        self.store_up = False  # whether the last round trip to Redis succeeded

    @property
    def lag(self) -> int:
        """Versions the store holds that the live weights do not yet."""
        return max(self.store_version - self.ledger.version, 0)

    def _seen(self, store_version: int) -> None:
        self.store_version = store_version
        self.store_up = True
        self.metrics.store_up.set(1)
        self.metrics.log_lag.set(self.lag)
        self.metrics.active_edits.set(len(self.ledger))
        self.metrics.edit_version.set(self.ledger.version)

    async def start(self) -> int:
        """Load the snapshot at the newest exact version, then apply the rest of the log;
        returns how many edits are active.

        A delta missing because its edit was rolled back (and pruned) after the active set
        was read means the store moved on: start again from its newest version.
        """
        while True:
            version, active = await self.store.newest()
            try:
                return await self._start(version, active)
            except StoreError as exc:
                if exc.code != "not_found" or await self.store.version() == version:
                    raise
                log.warning("%s: the store changed while starting; starting again", exc)

    async def _start(self, version: int, active: list[tuple[str, int]]) -> int:
        at = self.ledger.combiner.exact_version(version)
        if at != version:  # a merged combination starts from its last exact version
            active = await self.store.active_at(at)
        edits = await self._read_edits(active)
        position = await self.store.log_position(at)
        combiner = self.ledger.combiner
        saved = await self.store.snapshot(at) if at and combiner.snapshots else None
        state = None if saved is None else st_load(saved)
        await asyncio.to_thread(self.ledger.load, edits, at, state)
        self.position = position
        await self.sync()
        return len(self.ledger)

    async def _read_edits(self, active: list[tuple[str, int]], chunk: int = 256
                          ) -> list[ActiveEdit]:
        """The active edits' deltas, parsed in a worker thread while the next chunk is
        read from Redis (a replica with 10,000 edits reads hundreds of megabytes)."""
        def parse(part: list[tuple[str, int]], blobs: list[bytes]) -> list[ActiveEdit]:
            return [ActiveEdit(i, v, EditDelta.from_bytes(b)) for (i, v), b in zip(part, blobs)]

        parts = [active[k:k + chunk] for k in range(0, len(active), chunk)]
        edits: list[ActiveEdit] = []
        fetch = asyncio.ensure_future(self.store.deltas([i for i, _ in parts[0]])) if parts \
            else None
        try:
            for n, part in enumerate(parts):
                blobs = await fetch
                if n + 1 < len(parts):
                    fetch = asyncio.ensure_future(
                        self.store.deltas([i for i, _ in parts[n + 1]]))
                edits += await asyncio.to_thread(parse, part, blobs)
        finally:
            if fetch is not None and not fetch.done():
                fetch.cancel()  # a failed parse leaves no read behind
        return edits

    async def sync(self, known: dict[str, EditDelta] | None = None,
                   read: LogRead | None = None) -> None:
        """Apply every event after ``position``; ``known`` are deltas this replica has
        just computed (spares reading them back); ``read``: the log after ``position``
        as already read (else it is read: one round trip, more if it is long). A log the
        weights cannot follow (a store that lost changes, or an inconsistent event) is
        recovered from by a fresh start."""
        known = known or {}
        if read is None:
            read, _ = await self.store.read_log(self.position)
        if not read.held:
            log.warning("the log no longer holds event %s that the live weights applied "
                        "(a failover lost it); rebuilding from the store", self.position)
            await self.start()
            return
        pending, store_version = list(read.events), read.version
        if not read.complete:
            while True:
                page = await self.store.events(pending[-1][0], count=LOG_PAGE)
                pending += page
                if len(page) < LOG_PAGE:  # read to the end: its last change is whole, as
                    break  # every change's events are written by one atomic script
            store_version = await self.store.version()
        if store_version < self.ledger.version:
            log.warning("the store is at version %d, behind the live weights at %d; "
                        "rebuilding from the store", store_version, self.ledger.version)
            await self.start()
            return
        self.store_version = store_version  # what it lags by while it applies (/readyz)
        try:
            for change, last_id in _changes(pending):
                if change.version > self.ledger.version:
                    await self._apply(change, known)
                self.position = last_id
        except LedgerError as exc:
            log.error("the log does not fit the live weights (%s); rebuilding from the store",
                      exc)
            await self.start()
            return
        except StoreError as exc:  # pruned: rolled back longer ago than the retention
            log.warning("%s, which the log needs; rebuilding from the active edits", exc)
            await self.start()
            return
        self._seen(store_version)

    async def _apply(self, change: _Change, known: dict[str, EditDelta]) -> None:
        if change.applied is not None:
            delta = known.get(change.applied)
            if delta is None:
                delta = EditDelta.from_bytes(await self.store.delta(change.applied))
            await asyncio.to_thread(self.ledger.apply, change.applied, delta, change.version,
                                    change.removed)
            self.metrics.log_events.labels("apply").inc()
        else:
            await asyncio.to_thread(self.ledger.remove_many, change.removed, change.version)
        self.metrics.log_events.labels("rollback").inc(len(change.removed))
        if (self.ledger.combiner.snapshots and change.version % self.snapshot_every == 0
                and self.ledger.combiner.exact_version(change.version) == change.version
                and await self.store.claim_snapshot(change.version)):
            state = await asyncio.to_thread(lambda: st_save(self.ledger.combiner.exact_state()))
            await self.store.save_snapshot(change.version, state)

    async def run(self, change_lock: asyncio.Lock, block_ms: int = 1000) -> None:
        """Forever: wait for new events (or ``block_ms``), then apply them under the
        change lock. Lost connections are retried with jittered exponential backoff; the
        replica resumes from ``position`` when Redis returns."""
        backoff = ExponentialWithJitterBackoff(base=0.05, cap=0.5)  # back soon after a failover
        failures = 0
        task = asyncio.current_task()
        while True:
            if task is not None and task.cancelling():  # cancelled, though redis-py's
                raise asyncio.CancelledError  # retry swallowed it mid-read
            try:
                await self.store.wait_for_events(self.position, block_ms)
                async with change_lock:
                    await self.sync()
                failures = 0
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if task is not None and task.cancelling():  # a cancel (the service stops)
                    raise asyncio.CancelledError from exc  # that redis-py made an error
                if self.store_up:
                    log.warning("lost the edit store: %s", exc)
                self.store_up = False
                self.metrics.store_up.set(0)
                failures += 1
                await asyncio.sleep(backoff.compute(failures))


def _changes(events: list[tuple[str, dict[str, str]]]) -> list[tuple[_Change, str]]:
    """Group log events into changes (one per version), each with its last event's id;
    a trailing version cut off by paging is still whole (see ``sync``)."""
    out: list[tuple[_Change, str]] = []
    for event_id, fields in events:
        version = int(fields["version"])
        if not out or out[-1][0].version != version:
            out.append((_Change(version), event_id))
        change = out[-1][0]
        if fields["event"] == "apply":
            change.applied = fields["id"]
        else:
            change.removed.append(fields["id"])
        out[-1] = (change, event_id)
    return out
