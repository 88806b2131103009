"""The edit store: every edit's record and delta in Redis, and the log that rebuilds the
live weights after a restart.

Key layout, all under ``{namespace}:{fingerprint}`` (``{p}`` below) so that edits made to
one base model can never be replayed onto another:

========================  ========  ========================================================
key                       type      holds
========================  ========  ========================================================
``{p}:version``           string    the newest change's version (``INCR``; from 1): every
                                    edit applied and every rollback is a change
``{p}:edit:{id}``         hash      the edit: ``record`` (JSON), ``status``, ``version``,
                                    ``claims`` (the facts it sets), ``report`` (JSON: timings
                                    and measured quality), and once rolled back
                                    ``rolled_back_by`` / ``_at`` / ``_version`` (and
                                    ``superseded_by`` when a newer edit of its fact did it)
``{p}:delta:{id}``        string    the edit's delta (safetensors bytes); with a rolled-back
                                    retention it expires that long after the rollback
``{p}:edits``             zset      every edit id, scored by version (listing, newest first)
``{p}:active``            zset      active edit ids, scored by version (replay order)
``{p}:log``               stream    ``apply`` / ``rollback`` events in the order they happened
``{p}:idem:{key}``        hash      what an ``Idempotency-Key`` produced: ``ids``
                                    (comma-separated) and ``request`` (the request's hash);
                                    expires after the idempotency TTL
``{p}:claim:{fact}``      string    the active edit that holds a fact (its prompt, or its
                                    subject and relation): a new edit of the same fact
                                    supersedes it
``{p}:snapshot``          hash      ``version`` and ``state``: the combination's exact sums at
                                    a refresh version (safetensors bytes), from which a
                                    starting replica solves instead of rebuilding them
``{p}:saver:{v}``         string    which replica saves the snapshot at ``v`` (expires)
========================  ========  ========================================================

Every change is one Lua script, which Redis runs atomically: a crash at any instant leaves
either the whole change (records, deltas, indexes, log events, version) or none of it. A
batch of edits is one change per edit, all stored by one script: all or none. An edit that
claims a fact an active edit holds supersedes it in the same step and version: the older
edit is rolled back, its record naming the edit that superseded it. The expiries are set
by the same scripts, so they are part of the change too.

With ``wait_replicas`` (a primary with replicas, under Sentinel), a change is acknowledged
only once that many replicas confirm it (``WAIT``): Sentinel promotes the replica that holds
the most, so an acknowledged change outlives its primary.

The store keeps its own record type, ``StoredEdit``: the record and report are JSON objects
it stores as given (it reads only a listing's filters from them), beside the state its
changes set; the API's schemas are built from it above the store. An edit costs three
round trips: ``read_log`` (the log after the caller's position, the version and an
Idempotency-Key, in one pipeline), ``add`` (one script, which answers the stored edits'
state and, when nothing else was logged since that position, the events it wrote, so
neither is read back) and ``annotate``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

LOG_PAGE = 512  # log events read per round trip

ACTIVE = "active"
ROLLED_BACK = "rolled_back"

_RELEASE = """
local function release(prefix, id)
  local claims = redis.call('HGET', prefix .. ':edit:' .. id, 'claims')
  if claims then
    for claim in string.gmatch(claims, '[^\\n]+') do
      if redis.call('GET', prefix .. ':claim:' .. claim) == id then
        redis.call('DEL', prefix .. ':claim:' .. claim)
      end
    end
  end
end
"""

# A rolled-back edit's delta expires after the retention (ms; 0: kept); its record stays.
_RETIRE = """
local function retire(prefix, id, retention)
  if retention > 0 then redis.call('PEXPIRE', prefix .. ':delta:' .. id, retention) end
end
"""

# An edit's state fields: what the store's changes set beside the record and the report.
_STATE = ("version", "status", "rolled_back_by", "rolled_back_at", "rolled_back_version",
          "superseded_by")

_ADD = _RELEASE + _RETIRE + "local STATE = {" + ", ".join(f"'{f}'" for f in _STATE) + "}" + """
local prefix, idem, request, by, at = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local idem_ttl, retention, after = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
if idem ~= '' then
  local seen = redis.call('HMGET', prefix .. ':idem:' .. idem, 'ids', 'request')
  if seen[1] then
    -- a write, so that WAIT after it covers the earlier change this answer reports
    redis.call('HINCRBY', prefix .. ':idem:' .. idem, 'replays', 1)
    return {0, seen[1], seen[2], ''}
  end
end
-- whether the log's last event is the caller's position: then the events this change
-- writes are all the caller has not yet applied, and it need not read the log again
local follows = 0
if after ~= '' then
  local last = redis.call('XREVRANGE', prefix .. ':log', '+', '-', 'COUNT', 1)
  if (#last == 0 and after == '0-0') or (#last == 1 and last[1][1] == after) then
    follows = 1
  end
end
local ids, superseded, events, version = {}, {}, {}, 0
for i = 9, #ARGV, 4 do
  local id, record, delta, claims = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  version = redis.call('INCR', prefix .. ':version')
  for claim in string.gmatch(claims, '[^\\n]+') do
    local old = redis.call('GET', prefix .. ':claim:' .. claim)
    if old and old ~= id
        and redis.call('HGET', prefix .. ':edit:' .. old, 'status') == 'active' then
      release(prefix, old)
      retire(prefix, old, retention)
      redis.call('HSET', prefix .. ':edit:' .. old, 'status', 'rolled_back', 'rolled_back_by',
                 by, 'rolled_back_at', at, 'rolled_back_version', version, 'superseded_by', id)
      redis.call('ZREM', prefix .. ':active', old)
      local event = {'event', 'rollback', 'id', old, 'version', tostring(version),
                     'superseded_by', id}
      table.insert(events, {redis.call('XADD', prefix .. ':log', '*', unpack(event)), event})
      table.insert(superseded, old .. '>' .. id)
    end
  end
  redis.call('HSET', prefix .. ':edit:' .. id, 'record', record, 'status', 'active',
             'version', version, 'claims', claims)
  for claim in string.gmatch(claims, '[^\\n]+') do
    redis.call('SET', prefix .. ':claim:' .. claim, id)
  end
  redis.call('SET', prefix .. ':delta:' .. id, delta)
  redis.call('ZADD', prefix .. ':edits', version, id)
  redis.call('ZADD', prefix .. ':active', version, id)
  local event = {'event', 'apply', 'id', id, 'version', tostring(version)}
  table.insert(events, {redis.call('XADD', prefix .. ':log', '*', unpack(event)), event})
  table.insert(ids, id)
end
local joined = table.concat(ids, ',')
if idem ~= '' then
  redis.call('HSET', prefix .. ':idem:' .. idem, 'ids', joined, 'request', request)
  redis.call('PEXPIRE', prefix .. ':idem:' .. idem, idem_ttl)
end
-- each new edit's state once the whole batch is stored (a later edit of the batch may
-- have superseded an earlier one), so that the caller need not read them back
local states = {}
for _, id in ipairs(ids) do
  table.insert(states, redis.call('HMGET', prefix .. ':edit:' .. id, unpack(STATE)))
end
return {1, joined, request, table.concat(superseded, ','), version, follows, states, events}
"""

_ROLLBACK = _RELEASE + _RETIRE + """
local prefix, id, by, at, retention = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local key = prefix .. ':edit:' .. id
local status = redis.call('HGET', key, 'status')
if not status then return {'not_found', id} end
if status ~= 'active' then
  redis.call('HINCRBY', key, 'refused_rollbacks', 1)  -- a write: WAIT covers the earlier one
  return {'conflict', id, status}
end
release(prefix, id)
retire(prefix, id, retention)
local version = redis.call('INCR', prefix .. ':version')
redis.call('HSET', key, 'status', 'rolled_back', 'rolled_back_by', by, 'rolled_back_at', at,
           'rolled_back_version', version)
redis.call('ZREM', prefix .. ':active', id)
redis.call('XADD', prefix .. ':log', '*', 'event', 'rollback', 'id', id, 'version', version)
return {'ok', version}
"""

_ROLLBACK_AFTER = _RELEASE + _RETIRE + """
local prefix, after, by, at, retention = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local ids = redis.call('ZREVRANGEBYSCORE', prefix .. ':active', '+inf', '(' .. after)
if #ids == 0 then return {0} end
local version = redis.call('INCR', prefix .. ':version')
for _, id in ipairs(ids) do
  release(prefix, id)
  retire(prefix, id, retention)
  redis.call('HSET', prefix .. ':edit:' .. id, 'status', 'rolled_back', 'rolled_back_by', by,
             'rolled_back_at', at, 'rolled_back_version', version)
  redis.call('ZREM', prefix .. ':active', id)
  redis.call('XADD', prefix .. ':log', '*', 'event', 'rollback', 'id', id, 'version', version)
end
return {version, unpack(ids)}
"""


_SEEN = """
local key = ARGV[1]
local seen = redis.call('HMGET', key, 'ids', 'request')
if seen[1] then redis.call('HINCRBY', key, 'replays', 1) end  -- as in _ADD
return seen
"""

_SAVE_SNAPSHOT = """
local key, version, state = ARGV[1] .. ':snapshot', tonumber(ARGV[2]), ARGV[3]
local current = tonumber(redis.call('HGET', key, 'version') or '-1')
if current >= version then return 0 end
redis.call('HSET', key, 'version', version, 'state', state)
return 1
"""


# what Redis answers a change sent to a replica: a script's write, and WAIT
_ON_A_REPLICA = ("READONLY", "WAIT cannot be used with replica")


class StoreError(Exception):
    """A refused store change; ``code`` is machine-readable (``not_found``, ``conflict``,
    ``store_unconfirmed``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class StoredEdit:
    """An edit as the store keeps it: the record it was stored with and the report attached
    to it later (JSON objects, kept as given: the store reads no field of them but a
    listing's filters), and its state, which the store's changes set."""

    id: str
    record: dict[str, Any]
    version: int
    status: str
    report: dict[str, Any] | None = None
    rolled_back_by: str | None = None
    rolled_back_at: str | None = None
    rolled_back_version: int | None = None
    superseded_by: str | None = None


@dataclass(frozen=True)
class EditPage:
    """A listing's page, newest first; ``next_cursor``: the ``before`` of the next page."""

    edits: list[StoredEdit]
    next_cursor: int | None


@dataclass(frozen=True)
class NewEdit:
    """An edit to store: its record (a JSON object), its delta's bytes, and the facts it
    claims (an active edit holding one of them is superseded)."""

    record: dict[str, Any]
    delta: bytes
    claims: tuple[str, ...] = ()
    id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass(frozen=True)
class LogRead:
    """Log events after a position, with the store's newest version. ``held``: whether the
    log still holds the position (a failover can lose the newest events); ``complete``:
    whether ``events`` reach the end of the log (else more pages follow)."""

    held: bool
    events: list[tuple[str, dict[str, str]]]
    version: int
    complete: bool = True


@dataclass(frozen=True)
class Seen:
    """What an ``Idempotency-Key`` produced: its edits' ids and its request's hash."""

    ids: list[str]
    request_hash: str


@dataclass(frozen=True)
class AddResult:
    edits: list[StoredEdit]
    created: bool  # False: the Idempotency-Key had already produced these edits
    request_hash: str  # what the key's first request hashed to ("" if not given)
    superseded: dict[str, list[str]] = field(default_factory=dict)  # new id → old ids
    # the log after the position the add was given, when this change's own events are all
    # of it (then the caller applies them without reading the log); None otherwise
    log: LogRead | None = None


def _decode(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _ms(seconds: float | None) -> int:
    """Seconds as the milliseconds PEXPIRE takes (at least 1); None: 0, no expiry."""
    return 0 if seconds is None else max(1, round(seconds * 1000))


class EditStore:
    """Edits of one base model (``fingerprint``) in Redis; every change atomic.

    ``rolled_back_retention_s``: how long a rolled-back edit's delta is kept (None:
    forever); ``idempotency_ttl_s``: how long an ``Idempotency-Key`` is remembered.
    """

    def __init__(self, client: aioredis.Redis, fingerprint: str,
                 namespace: str = "instructedit", *,
                 rolled_back_retention_s: float | None = None,
                 idempotency_ttl_s: float = 86400.0, wait_replicas: int = 0,
                 wait_timeout_ms: int = 1000) -> None:
        self.client = client
        self.prefix = f"{namespace}:{fingerprint}"
        self._retention_ms = _ms(rolled_back_retention_s)
        self._idem_ttl_ms = _ms(idempotency_ttl_s)
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._add = client.register_script(_ADD)
        self._seen = client.register_script(_SEEN)
        self._rollback = client.register_script(_ROLLBACK)
        self._rollback_after = client.register_script(_ROLLBACK_AFTER)
        self._save_snapshot = client.register_script(_SAVE_SNAPSHOT)

    def key(self, *parts: str) -> str:
        return ":".join([self.prefix, *parts])

    async def _change(self, script: AsyncScript, args: list, *,
                      confirm: Callable[[list], bool] = lambda _: True,
                      reads: Callable[[Pipeline], None] | None = None) -> tuple[Any, list]:
        """Run one change's script; with ``wait_replicas``, acknowledge it only once that
        many replicas hold it (``WAIT`` on the script's own connection: a pipeline; it
        covers every earlier write too), so a failover to any of them keeps it. Fewer in
        time: ``store_unconfirmed`` (the primary has the change; a retry with the same
        Idempotency-Key finds it if it survives). ``confirm``: whether a script's result
        reports a change to confirm (a key not found has none). ``reads``: commands to send
        in the same round trip, after the script; their replies are returned beside its
        result."""
        try:
            if not self.wait_replicas and reads is None:
                return await script(args=args), []
            out, *rest = await self._pipelined(script, args, reads)
            held = rest.pop() if self.wait_replicas else self.wait_replicas
        except ResponseError as exc:
            if not any(sign in str(exc) for sign in _ON_A_REPLICA):
                raise
            # A change sent to a replica (a primary demoted by a failover, still named by a
            # sentinel that has not caught up): Redis wraps READONLY in the script's error,
            # or refuses the WAIT, neither of which redis-py takes for a lost primary. Drop
            # the connections, so the next try asks the sentinels again; meanwhile, the
            # store is unavailable.
            await self.client.connection_pool.disconnect()
            raise RedisConnectionError(f"the store wrote to a replica: {exc}") from exc
        if held < self.wait_replicas and confirm(out):
            raise StoreError("store_unconfirmed", f"the change is on the Redis primary but "
                             f"{held} of the {self.wait_replicas} replicas it waits for "
                             f"confirmed it within {self.wait_timeout_ms} ms; retry (an edit "
                             "with the same Idempotency-Key) once the replicas are back")
        return out, rest

    async def _pipelined(self, script: AsyncScript, args: list,
                         reads: Callable[[Pipeline], None] | None) -> list:
        """The script, ``reads`` and (with ``wait_replicas``) ``WAIT`` in one round trip.
        By its hash alone (redis-py would first ask whether the server has the script, a
        round trip more); a server that has not loaded it (new, or a replica promoted since)
        is sent it once, and the pipeline again."""
        loaded = False
        while True:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.evalsha(script.sha, 0, *args)
                if reads is not None:
                    reads(pipe)
                if self.wait_replicas:
                    pipe.wait(self.wait_replicas, self.wait_timeout_ms)
                try:
                    return await pipe.execute()
                except NoScriptError:
                    if loaded:
                        raise
            await self.client.script_load(script.script)
            loaded = True

    async def version(self) -> int:
        """The newest change's version (0 before any)."""
        return int(await self.client.get(self.key("version")) or 0)

    async def add(self, edits: list[NewEdit], *, idempotency_key: str | None = None,
                  request_hash: str = "", by: str = "", at: str = "",
                  log_after: str | None = None) -> AddResult:
        """Store new active edits, each under the next version, all or none; or return what
        an earlier request with the same ``idempotency_key`` stored (storing nothing).

        An active edit that holds a fact a new edit claims is rolled back in the same step
        (by ``by``, at ``at``), as part of the new edit's change. The stored edits come back
        as they are once the whole batch is stored, without reading them again; with
        ``log_after`` (a log position), so does the log after it when it is only this
        change's own events (``AddResult.log``).
        """
        if not edits:
            raise ValueError("nothing to store")
        args = [self.prefix, idempotency_key or "", request_hash, by, at,
                self._idem_ttl_ms, self._retention_ms, log_after or ""]
        for edit in edits:
            if any("\n" in c for c in edit.claims):
                raise ValueError("a claim cannot contain a newline")
            args += [edit.id, _json(edit.record), edit.delta, "\n".join(edit.claims)]
        out, _ = await self._change(self._add, args)
        created, ids, stored_hash, replaced = (_decode(x) for x in out[:4])
        superseded: dict[str, list[str]] = {}
        for pair in filter(None, (replaced or "").split(",")):
            old, new = pair.split(">")
            superseded.setdefault(new, []).append(old)
        if int(created) != 1:
            return AddResult(await self.get_many(ids.split(",")), False, stored_hash or "")
        version, follows, states, events = out[4:]
        stored = [_edit(e.id, e.record, None, dict(zip(_STATE, state)))
                  for e, state in zip(edits, states)]
        log = None if not int(follows) else LogRead(True, [
            (_decode(event_id), _fields(fields)) for event_id, fields in events], int(version))
        return AddResult(stored, True, stored_hash or "", superseded, log)

    async def read_log(self, after: str, count: int = LOG_PAGE,
                       idempotency_key: str | None = None) -> tuple[LogRead, Seen | None]:
        """The log after position ``after`` (up to ``count`` events) and the newest version,
        in one round trip; with ``idempotency_key``, also what that key produced, in the same
        round trip: with ``wait_replicas``, only once the replicas hold it (an earlier try
        may have been answered ``store_unconfirmed``)."""
        def reads(pipe: Pipeline) -> None:
            if after not in ("-", "0-0"):
                pipe.xrange(self.key("log"), after, after, count=1)
            pipe.xrange(self.key("log"), "-" if after in ("-", "0-0") else f"({after}", "+",
                        count=count)
            pipe.get(self.key("version"))

        key = idempotency_key and self.key("idem", idempotency_key)
        seen = None
        if key and self.wait_replicas:
            seen, replies = await self._change(self._seen, [key], reads=reads,
                                               confirm=lambda s: s[0] is not None)
        else:
            async with self.client.pipeline(transaction=False) as pipe:
                if key:
                    pipe.hmget(key, "ids", "request")
                reads(pipe)
                replies = await pipe.execute()
            if key:
                seen, *replies = replies
        *position, rows, version = replies
        read = LogRead(bool(position[0]) if position else True,
                       [(_decode(i), _fields(f)) for i, f in rows], int(version or 0),
                       len(rows) < count)
        return read, _idempotent(seen)

    async def annotate(self, reports: dict[str, dict[str, Any]]) -> None:
        """Attach to each edit the report (a JSON object) measured once it was applied (one
        round trip)."""
        pipe = self.client.pipeline(transaction=False)
        for edit_id, report in reports.items():
            pipe.hset(self.key("edit", edit_id), "report", _json(report))
        await pipe.execute()

    async def get(self, edit_id: str) -> StoredEdit:
        return (await self.get_many([edit_id]))[0]

    async def get_many(self, edit_ids: list[str]) -> list[StoredEdit]:
        """Several edits in one round trip (a pipeline of reads), in the order asked."""
        pipe = self.client.pipeline(transaction=False)
        for edit_id in edit_ids:
            pipe.hgetall(self.key("edit", edit_id))
        return [_stored(edit_id, fields)
                for edit_id, fields in zip(edit_ids, await pipe.execute())]

    async def delta(self, edit_id: str) -> bytes:
        data = await self.client.get(self.key("delta", edit_id))
        if data is None:
            raise StoreError("not_found", f"no delta for edit {edit_id!r}")
        return data

    async def rollback(self, edit_id: str, *, by: str, at: str) -> StoredEdit:
        """Mark one active edit rolled back (who, when, as which version) and log it."""
        out = [_decode(x) for x in (await self._change(
            self._rollback, [self.prefix, edit_id, by, at, self._retention_ms],
            confirm=lambda out: _decode(out[0]) != "not_found"))[0]]
        if out[0] == "not_found":
            raise StoreError("not_found", f"no edit {edit_id!r}")
        if out[0] == "conflict":
            raise StoreError("conflict", f"edit {edit_id!r} is already {out[2]}")
        return await self.get(edit_id)

    async def rollback_after(self, version: int, *, by: str, at: str) -> list[str]:
        """Roll back every active edit newer than ``version``, as one change (a new version,
        none when nothing was newer). Returns their ids, newest first."""
        out, _ = await self._change(self._rollback_after,
                                    [self.prefix, version, by, at, self._retention_ms],
                                    confirm=lambda out: int(out[0]) != 0)
        return [_decode(x) for x in out[1:]]

    async def active(self) -> list[tuple[str, int]]:
        """Active edits as ``(id, version)`` in the order they were applied."""
        rows = await self.client.zrange(self.key("active"), 0, -1, withscores=True)
        return [(_decode(i), int(v)) for i, v in rows]

    async def newest(self) -> tuple[int, list[tuple[str, int]]]:
        """The newest version and the edits active right after it, read atomically (one
        transaction): a replica's starting point without asking every edit's history."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.get(self.key("version"))
            pipe.zrange(self.key("active"), 0, -1, withscores=True)
            version, rows = await pipe.execute()
        return int(version or 0), [(_decode(i), int(v)) for i, v in rows]

    async def list(self, *, before: int | None = None, limit: int = 50,
                   status: str | None = None, task: str | None = None,
                   subject: str | None = None) -> EditPage:
        """Newest first, filtered. ``before`` is the cursor: only edits with a lower version.

        A page that ends with older edits still stored carries ``next_cursor``.
        """
        edits: list[StoredEdit] = []
        upper = "+inf" if before is None else f"({before}"
        batch = max(limit, 64)
        while True:
            rows = await self.client.zrevrangebyscore(self.key("edits"), upper, "-inf",
                                                      start=0, num=batch, withscores=True)
            for edit in await self.get_many([_decode(raw_id) for raw_id, _ in rows]):
                if ((status is None or edit.status == status)
                        and (task is None or edit.record.get("task") == task)
                        and (subject is None or edit.record.get("subject") == subject)):
                    edits.append(edit)
                    if len(edits) == limit:
                        older = await self.client.zcount(self.key("edits"), "-inf",
                                                         f"({edit.version}")
                        return EditPage(edits, edit.version if older else None)
            if len(rows) < batch:
                return EditPage(edits, None)
            upper = f"({int(rows[-1][1])}"

    async def deltas(self, edit_ids: list[str], chunk: int = 64) -> list[bytes]:
        """Several edits' deltas, ``chunk`` per round trip (a stored delta is hundreds of
        kilobytes: one reply for thousands would be gigabytes)."""
        found = []
        for start in range(0, len(edit_ids), chunk):
            found += await self.client.mget([self.key("delta", i)
                                             for i in edit_ids[start:start + chunk]])
        missing = [i for i, d in zip(edit_ids, found) if d is None]
        if missing:
            raise StoreError("not_found", f"no delta for edits {missing}")
        return found

    async def active_at(self, version: int) -> list[tuple[str, int]]:
        """The edits that were active right after change ``version``, as ``(id, version)``
        in version order: applied at or before it and not rolled back by then. History
        does not change, so this is the same whenever it is asked."""
        rows = await self.client.zrangebyscore(self.key("edits"), "-inf", version,
                                               withscores=True)
        async with self.client.pipeline(transaction=False) as pipe:
            for edit_id, _ in rows:
                pipe.hmget(self.key("edit", _decode(edit_id)), "status", "rolled_back_version")
            states = await pipe.execute()
        return [(_decode(i), int(v)) for (i, v), (status, gone) in zip(rows, states)
                if _decode(status) == ACTIVE or int(gone) > version]

    async def events(self, after: str = "-", count: int | None = None
                     ) -> list[tuple[str, dict[str, str]]]:
        """Log events after stream id ``after`` (exclusive; ``-`` from the start)."""
        start = "-" if after in ("-", "0-0") else f"({after}"
        rows = await self.client.xrange(self.key("log"), start, "+", count=count)
        return [(_decode(i), _fields(f)) for i, f in rows]

    async def log_position(self, version: int) -> str:
        """The stream id of the newest log event of a change at or before ``version``
        (``0-0`` if none): where a replica that holds that version follows on from."""
        upper = "+"
        while True:
            rows = await self.client.xrevrange(self.key("log"), upper, "-", count=256)
            for event_id, fields in rows:
                if int(_decode(fields[b"version"])) <= version:
                    return _decode(event_id)
            if len(rows) < 256:
                return "0-0"
            upper = f"({_decode(rows[-1][0])}"

    async def claim_snapshot(self, version: int) -> bool:
        """Whether this caller is the one to save the snapshot at ``version`` (the first
        to ask; every replica computes the same one)."""
        return bool(await self.client.set(self.key("saver", str(version)), 1,
                                          nx=True, ex=3600))

    async def save_snapshot(self, version: int, state: bytes) -> bool:
        """Keep ``state`` as the snapshot at ``version`` unless a newer one is kept."""
        return bool(await self._save_snapshot(args=[self.prefix, version, state]))

    async def snapshot(self, version: int) -> bytes | None:
        """The kept snapshot if it is the one at ``version``."""
        kept, state = await self.client.hmget(self.key("snapshot"), "version", "state")
        return state if kept is not None and int(kept) == version else None

    async def wait_for_events(self, after: str, block_ms: int) -> bool:
        """Block until the log has an event after ``after`` or ``block_ms`` pass; whether
        one came."""
        found = await self.client.xread({self.key("log"): after}, count=1, block=block_ms)
        return bool(found)


def _json(value: dict[str, Any]) -> str:
    """A record or report as stored: compact JSON, UTF-8 as is."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _fields(fields: dict | list) -> dict[str, str]:
    """A log event's fields (a mapping as read, or a flat name, value … list as written)."""
    pairs = fields.items() if isinstance(fields, dict) else zip(fields[::2], fields[1::2])
    return {_decode(k): _decode(v) for k, v in pairs}


def _idempotent(reply: list | None) -> Seen | None:
    """An ``Idempotency-Key``'s hash fields ``ids`` and ``request``, if it was seen."""
    ids, request_hash = (_decode(x) for x in reply or (None, None))
    return None if ids is None else Seen(ids.split(","), request_hash or "")


def _edit(edit_id: str, record: dict[str, Any], report: dict[str, Any] | None,
          state: dict) -> StoredEdit:
    f = {k: _decode(v) for k, v in state.items()}
    number = lambda k: None if f.get(k) is None else int(f[k])  # noqa: E731
    return StoredEdit(edit_id, record, int(f["version"]), f["status"], report,
                      f.get("rolled_back_by"), f.get("rolled_back_at"),
                      number("rolled_back_version"), f.get("superseded_by"))


def _stored(edit_id: str, fields: dict) -> StoredEdit:
    """The edit in a stored hash: its record and report (JSON) and its state fields."""
    if not fields:
        raise StoreError("not_found", f"no edit {edit_id!r}")
    f = {_decode(k): _decode(v) for k, v in fields.items()}
    report = f.get("report")
    return _edit(edit_id, json.loads(f["record"]), None if report is None else json.loads(report),
                 {k: f.get(k) for k in _STATE})
