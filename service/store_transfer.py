"""Moving one store's edits to a file and back (``instructedit edits export`` / ``import``).

The file is JSON lines: a header naming the store (its key, the model fingerprint,
combination and basis it was keyed by), then every edit in version order with its stored
hash fields verbatim and its delta base64-encoded (``null`` once pruned), then the log's
events in order. Stored deltas replay as stored, so a store imported from it rebuilds the
same weights and lists the same edits. Not carried: the combination's snapshot (a starting
replica rebuilds its sums from the edits), Idempotency-Keys and claims (claims are rebuilt
from the active edits' ``claims`` field).

An import writes the edits' hashes and deltas first (no index names them yet, so nothing
reads them), then one Lua script installs the indexes, claims, log and version, so the
store appears whole or not at all; it refuses a store that already has edits.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from .store import EditStore, _decode

FORMAT = "instructedit-edits"
FORMAT_VERSION = 1


class StoreIdentity(BaseModel):
    """What a store is keyed by: edits only replay on the same model, combination, basis."""

    model_config = ConfigDict(extra="forbid")

    store_key: str
    model_fingerprint: str
    combination: dict
    basis: str


class Header(StoreIdentity):
    """The file's first line: the store it came from and what follows."""

    format: Literal["instructedit-edits"] = FORMAT
    format_version: Literal[1] = FORMAT_VERSION
    version: int = Field(ge=0, description="the store's newest version when exported")
    edits: int = Field(ge=0)
    events: int = Field(ge=0)


class EditLine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["edit"] = "edit"
    id: str = Field(min_length=1)
    fields: dict[str, str]  # the stored hash, verbatim
    delta: str | None  # base64 of the stored bytes; None once pruned


class EventLine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["event"] = "event"
    fields: list[str]  # name, value, name, value … as in the log stream


Line = TypeAdapter(Annotated[EditLine | EventLine, Field(discriminator="kind")])


class TransferError(Exception):
    """A refused export or import; nothing was written to the target."""


# Installs an imported store's indexes, claims, log and version in one step. ARGV: prefix,
# version, number of edits, their ids, then each event as a JSON array of its fields.
_INSTALL = """
local prefix, version, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
if redis.call('EXISTS', prefix .. ':version') == 1
    or redis.call('ZCARD', prefix .. ':edits') > 0 then
  return {0, 'the store has edits'}
end
for i = 4, 3 + n do
  local id = ARGV[i]
  local f = redis.call('HMGET', prefix .. ':edit:' .. id, 'status', 'version', 'claims')
  if not f[1] then return {0, 'edit ' .. id .. ' was not written'} end
  redis.call('ZADD', prefix .. ':edits', f[2], id)
  if f[1] == 'active' then
    redis.call('ZADD', prefix .. ':active', f[2], id)
    for claim in string.gmatch(f[3] or '', '[^\\n]+') do
      redis.call('SET', prefix .. ':claim:' .. claim, id)
    end
  end
end
for i = 4 + n, #ARGV do
  redis.call('XADD', prefix .. ':log', '*', unpack(cjson.decode(ARGV[i])))
end
redis.call('SET', prefix .. ':version', version)
return {1, ''}
"""


async def export_lines(store: EditStore, identity: StoreIdentity, chunk: int = 64
                       ) -> AsyncIterator[tuple[str, str]]:
    """The store as JSON lines, each with its kind (``header`` first, then ``edit``s,
    then ``event``s). The edit list, log and version are read in one transaction; if the
    version moved before the last edit was read, the export is refused (a change mid-way
    would leave records and log disagreeing)."""
    client = store.client
    async with client.pipeline(transaction=True) as pipe:
        pipe.get(store.key("version"))
        pipe.zrange(store.key("edits"), 0, -1)
        pipe.xrange(store.key("log"), "-", "+")
        version, ids, events = await pipe.execute()
    version, ids = int(version or 0), [_decode(i) for i in ids]
    header = Header(**identity.model_dump(), version=version, edits=len(ids),
                    events=len(events))
    yield "header", header.model_dump_json()
    for start in range(0, len(ids), chunk):
        part = ids[start:start + chunk]
        pipe = client.pipeline(transaction=False)
        for edit_id in part:
            pipe.hgetall(store.key("edit", edit_id))
            pipe.get(store.key("delta", edit_id))
        found = await pipe.execute()
        for edit_id, fields, delta in zip(part, found[::2], found[1::2]):
            yield "edit", EditLine(
                id=edit_id, fields={_decode(k): _decode(v) for k, v in fields.items()},
                delta=None if delta is None else base64.b64encode(delta).decode()
            ).model_dump_json()
    if await store.version() != version:
        raise TransferError(f"the store changed while exporting (version {version} → "
                            f"{await store.version()}): export again when no edits are made")
    for _, fields in events:
        yield "event", EventLine(fields=[_decode(x) for kv in fields.items() for x in kv]
                        ).model_dump_json()


def read_header(first_line: str, target: StoreIdentity) -> Header:
    """The file's header, if the file holds edits of the target's store; else refused."""
    try:
        header = Header.model_validate_json(first_line)
    except ValidationError as exc:
        raise TransferError(f"line 1 is not an {FORMAT} header: {exc}") from exc
    if header.model_fingerprint != target.model_fingerprint:
        raise TransferError(
            f"the file holds edits of base model {header.model_fingerprint[:16]}…, but these "
            f"settings load model {target.model_fingerprint[:16]}…: edits only replay on "
            "the model they were made for")
    if header.store_key != target.store_key:
        raise TransferError(
            f"the file holds edits made with combination {header.combination} and basis "
            f"{header.basis!r}, but these settings use combination {target.combination} "
            f"and basis {target.basis!r}")
    return header


async def clear(store: EditStore) -> int:
    """Delete every key of the store; how many were deleted."""
    deleted = 0
    async for batch in _key_batches(store):
        deleted += await store.client.delete(*batch)
    return deleted


async def _key_batches(store: EditStore, size: int = 500) -> AsyncIterator[list]:
    batch = []
    async for key in store.client.scan_iter(match=f"{store.prefix}:*", count=size):
        batch.append(key)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


async def is_empty(store: EditStore) -> bool:
    return not await store.client.exists(store.key("version"), store.key("edits"))


async def import_lines(store: EditStore, header: Header, lines: Iterable[str],
                       progress: Callable[[int], None] = lambda n: None,
                       chunk: int = 64) -> int:
    """Write the edits and log that follow ``header`` into an empty store; how many edits.
    On any error the hashes and deltas written so far are deleted again."""
    if not await is_empty(store):
        raise TransferError("the target store already has edits (import --replace clears it)")
    ids: list[str] = []
    events: list[str] = []
    known: set[str] = set()
    try:
        pipe = store.client.pipeline(transaction=False)
        for number, text in enumerate(lines, start=2):
            line = _parse(number, text)
            if isinstance(line, EventLine):
                _check_event(number, line, known)
                events.append(json.dumps(line.fields))
                continue
            if events:
                raise TransferError(f"line {number}: an edit after the log's events")
            _check_edit(number, line, header.version)
            pipe.hset(store.key("edit", line.id), mapping=line.fields)
            if line.delta is not None:
                pipe.set(store.key("delta", line.id), _bytes(number, line.delta))
            ids.append(line.id)
            known.add(line.id)
            if len(ids) % chunk == 0:
                await pipe.execute()
                progress(chunk)
        await pipe.execute()
        progress(len(ids) % chunk)
        if (len(ids), len(events)) != (header.edits, header.events):
            raise TransferError(f"the file ends early: {len(ids)} edits and {len(events)} "
                                f"events, the header says {header.edits} and {header.events}")
        install = store.client.register_script(_INSTALL)
        done, why = await install(args=[store.prefix, header.version, len(ids), *ids, *events])
        if not int(done):
            raise TransferError(f"not imported: {_decode(why)}")
    except BaseException:
        if ids:  # unindexed, so nothing read them; leave no trace
            keys = [store.key(kind, i) for i in ids for kind in ("edit", "delta")]
            for start in range(0, len(keys), 512):
                await store.client.delete(*keys[start:start + 512])
        raise
    return len(ids)


def _parse(number: int, text: str) -> EditLine | EventLine:
    try:
        return Line.validate_json(text)
    except ValidationError as exc:
        raise TransferError(f"line {number}: {exc}") from exc


def _check_edit(number: int, line: EditLine, version: int) -> None:
    """The fields a store needs to list and replay the edit."""
    missing = {"record", "status", "version"} - line.fields.keys()
    if missing:
        raise TransferError(f"line {number}: edit {line.id!r} lacks {sorted(missing)}")
    if not line.fields["version"].isdigit() or not 0 < int(line.fields["version"]) <= version:
        raise TransferError(f"line {number}: edit {line.id!r} has version "
                            f"{line.fields['version']!r}, not 1…{version}")
    if line.fields["status"] == "active" and line.delta is None:
        raise TransferError(f"line {number}: active edit {line.id!r} has no delta")


def _check_event(number: int, line: EventLine, known: set[str]) -> None:
    """An ``apply`` or ``rollback`` of an edit in the file, at a version."""
    fields = dict(zip(line.fields[::2], line.fields[1::2]))
    if (len(line.fields) % 2 or fields.get("event") not in ("apply", "rollback")
            or fields.get("id") not in known or not fields.get("version", "").isdigit()):
        raise TransferError(f"line {number}: not a log event of an edit in the file")


def _bytes(number: int, text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise TransferError(f"line {number}: the delta is not base64: {exc}") from exc
