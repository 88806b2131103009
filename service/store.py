"""The edit store: every edit's record and delta in Redis, and the log that rebuilds the
live weights after a restart.

Key layout, all under ``{namespace}:{fingerprint}`` (``{p}`` below) so that edits made to
one base model can never be replayed onto another:

========================  ========  ========================================================
key                       type      holds
========================  ========  ========================================================
``{p}:version``           string    the newest edit version (``INCR``; versions start at 1)
``{p}:edit:{id}``         hash      the edit record: ``record`` (JSON), ``status``,
                                    ``version``, and once rolled back ``rolled_back_by`` /
                                    ``rolled_back_at``
``{p}:delta:{id}``        string    the edit's stored delta (safetensors bytes)
``{p}:edits``             zset      every edit id, scored by version (listing, newest first)
``{p}:active``            zset      active edit ids, scored by version (replay order)
``{p}:log``               stream    ``apply`` / ``rollback`` events in the order they happened
``{p}:idem:{key}``        string    the edit id an ``Idempotency-Key`` produced
========================  ========  ========================================================

Every change is one Lua script, which Redis runs atomically: a crash at any instant leaves
either the whole edit (record, delta, indexes, log event, version) or none of it.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

ACTIVE = "active"
ROLLED_BACK = "rolled_back"

_ADD = """
local prefix, id, record, delta, idem = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if idem ~= '' then
  local existing = redis.call('GET', prefix .. ':idem:' .. idem)
  if existing then return {0, existing} end
end
local version = redis.call('INCR', prefix .. ':version')
redis.call('HSET', prefix .. ':edit:' .. id, 'record', record, 'status', 'active',
           'version', version)
redis.call('SET', prefix .. ':delta:' .. id, delta)
redis.call('ZADD', prefix .. ':edits', version, id)
redis.call('ZADD', prefix .. ':active', version, id)
redis.call('XADD', prefix .. ':log', '*', 'event', 'apply', 'id', id, 'version', version)
if idem ~= '' then redis.call('SET', prefix .. ':idem:' .. idem, id) end
return {1, id, version}
"""

_ROLLBACK = """
local prefix, id, by, at = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local key = prefix .. ':edit:' .. id
local status = redis.call('HGET', key, 'status')
if not status then return {'not_found', id} end
if status ~= 'active' then return {'conflict', id, status} end
redis.call('HSET', key, 'status', 'rolled_back', 'rolled_back_by', by, 'rolled_back_at', at)
redis.call('ZREM', prefix .. ':active', id)
redis.call('XADD', prefix .. ':log', '*', 'event', 'rollback', 'id', id,
           'version', redis.call('HGET', key, 'version'))
return {'ok', id}
"""

_ROLLBACK_AFTER = """
local prefix, after, by, at = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ids = redis.call('ZREVRANGEBYSCORE', prefix .. ':active', '+inf', '(' .. after)
for _, id in ipairs(ids) do
  local key = prefix .. ':edit:' .. id
  redis.call('HSET', key, 'status', 'rolled_back', 'rolled_back_by', by, 'rolled_back_at', at)
  redis.call('ZREM', prefix .. ':active', id)
  redis.call('XADD', prefix .. ':log', '*', 'event', 'rollback', 'id', id,
             'version', redis.call('HGET', key, 'version'))
end
return ids
"""


class StoreError(Exception):
    """A refused store change; ``code`` is machine-readable (``not_found``, ``conflict``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class StoredEdit:
    """One edit as stored: its id, version, status and the record the caller gave."""

    id: str
    version: int
    status: str
    record: dict[str, Any]
    rolled_back_by: str | None = None
    rolled_back_at: str | None = None


@dataclass(frozen=True)
class AddResult:
    edit: StoredEdit
    created: bool  # False: the Idempotency-Key had already produced this edit


@dataclass
class EditPage:
    edits: list[StoredEdit] = field(default_factory=list)
    next_cursor: int | None = None  # pass back as ``before`` for the next page


def _decode(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class EditStore:
    """Edits of one base model (``fingerprint``) in Redis; every change atomic."""

    def __init__(self, client: aioredis.Redis, fingerprint: str,
                 namespace: str = "instructedit") -> None:
        self.client = client
        self.prefix = f"{namespace}:{fingerprint}"
        self._add = client.register_script(_ADD)
        self._rollback = client.register_script(_ROLLBACK)
        self._rollback_after = client.register_script(_ROLLBACK_AFTER)

    def key(self, *parts: str) -> str:
        return ":".join([self.prefix, *parts])

    async def version(self) -> int:
        return int(await self.client.get(self.key("version")) or 0)

    async def add(self, record: dict[str, Any], delta: bytes, *,
                  idempotency_key: str | None = None, edit_id: str | None = None) -> AddResult:
        """Store a new active edit under the next version, or return the edit an earlier
        request with the same ``idempotency_key`` created (storing nothing)."""
        edit_id = edit_id or uuid.uuid4().hex
        out = await self._add(args=[self.prefix, edit_id, json.dumps(record), delta,
                                    idempotency_key or ""])
        created, stored_id = int(out[0]), _decode(out[1])
        edit = await self.get(stored_id)
        return AddResult(edit, bool(created))

    async def find_idempotent(self, key: str) -> StoredEdit | None:
        """The edit an earlier request with this ``Idempotency-Key`` created, if any."""
        edit_id = await self.client.get(self.key("idem", key))
        return None if edit_id is None else await self.get(_decode(edit_id))

    async def get(self, edit_id: str) -> StoredEdit:
        fields = await self.client.hgetall(self.key("edit", edit_id))
        if not fields:
            raise StoreError("not_found", f"no edit {edit_id!r}")
        f = {_decode(k): _decode(v) for k, v in fields.items()}
        return StoredEdit(edit_id, int(f["version"]), f["status"], json.loads(f["record"]),
                          f.get("rolled_back_by"), f.get("rolled_back_at"))

    async def delta(self, edit_id: str) -> bytes:
        data = await self.client.get(self.key("delta", edit_id))
        if data is None:
            raise StoreError("not_found", f"no delta for edit {edit_id!r}")
        return data

    async def rollback(self, edit_id: str, *, by: str, at: str) -> StoredEdit:
        """Mark one active edit rolled back (who, when) and log it."""
        out = [_decode(x) for x in await self._rollback(args=[self.prefix, edit_id, by, at])]
        if out[0] == "not_found":
            raise StoreError("not_found", f"no edit {edit_id!r}")
        if out[0] == "conflict":
            raise StoreError("conflict", f"edit {edit_id!r} is already {out[2]}")
        return await self.get(edit_id)

    async def rollback_after(self, version: int, *, by: str, at: str) -> list[str]:
        """Roll back every active edit newer than ``version``; their ids, newest first."""
        out = await self._rollback_after(args=[self.prefix, version, by, at])
        return [_decode(x) for x in out]

    async def active(self) -> list[tuple[str, int]]:
        """Active edits as ``(id, version)`` in the order they were applied."""
        rows = await self.client.zrange(self.key("active"), 0, -1, withscores=True)
        return [(_decode(i), int(v)) for i, v in rows]

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
            for raw_id, _ in rows:
                edit = await self.get(_decode(raw_id))
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

    async def events(self, after: str = "-", count: int | None = None
                     ) -> list[tuple[str, dict[str, str]]]:
        """Log events after stream id ``after`` (exclusive; ``-`` from the start)."""
        start = "-" if after == "-" else f"({after}"
        rows = await self.client.xrange(self.key("log"), start, "+", count=count)
        return [(_decode(i), {_decode(k): _decode(v) for k, v in f.items()}) for i, f in rows]
