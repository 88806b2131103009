"""The HTTP API: a thin FastAPI layer over the edit engine and the live model.

Every error body is ``{"error": {"code", "message", "details"}}``. Model work runs in
worker threads; a generation holds the ledger's read lock, so it sees the weights wholly
before or wholly after an edit and reports which version produced it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from editor_core.decoding import greedy_continuations
from editor_core.editor import EditRequest

from .lifecycle import LiveService
from .schemas import EditIn, EditOut, ErrorOut, GenerateIn, GenerateOut
from .settings import ServiceSettings
from .store import StoredEdit, StoreError

_STATUS = {"not_found": 404, "conflict": 409}


def _error(status: int, code: str, message: str, details: dict | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    return JSONResponse(body, status_code=status)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _edit_out(edit: StoredEdit) -> EditOut:
    r = edit.record
    return EditOut(id=edit.id, version=edit.version, status=edit.status, task=r["task"],
                   prompt=r["prompt"], target=r["target"], subject=r.get("subject"),
                   instruction=r["instruction"], created_at=r["created_at"],
                   rolled_back_by=edit.rolled_back_by, rolled_back_at=edit.rolled_back_at,
                   metadata=r.get("metadata", {}))


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.live = await LiveService.start(settings)
        try:
            yield
        finally:
            await app.state.live.stop()

    app = FastAPI(title="InstructEdit Server", version="0.1.0", lifespan=lifespan,
                  responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut},
                             422: {"model": ErrorOut}})

    @app.exception_handler(StoreError)
    async def store_error(_: Request, exc: StoreError) -> JSONResponse:
        return _error(_STATUS.get(exc.code, 400), exc.code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        return _error(422, "invalid_request", "the request body does not match the schema",
                      {"errors": errors})

    def live(request: Request) -> LiveService:
        return request.app.state.live

    @app.get("/healthz")
    async def healthz() -> dict:
        """Alive (answers even while an edit runs)."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        """Ready only once the stored edits have been replayed."""
        state = getattr(request.app.state, "live", None)
        if state is None or not state.ready:
            return _error(503, "not_ready", "the service is starting")
        return JSONResponse({"status": "ready", "replayed": state.replayed})

    @app.get("/info")
    async def info(request: Request) -> dict:
        s = live(request)
        return {"model": str(s.settings.model), "editor": str(s.settings.editor),
                "editable": [w.name for w in s.editor.editable],
                "device": s.settings.device, "dtype": s.settings.dtype,
                "edit_version": s.ledger.version, "active_edits": len(s.ledger),
                "fingerprint": s.fingerprint, "live_digest": s.ledger.live_digest(),
                "pristine_digest": s.pristine_digest}

    @app.post("/edits", status_code=201, response_model=EditOut)
    async def create_edit(body: EditIn, request: Request) -> EditOut:
        """Edit the live model; the edit is stored and can be rolled back exactly."""
        s = live(request)
        edit_request = EditRequest(body.task, body.prompt, body.target, subject=body.subject,
                                   description=body.description, sentiment=body.sentiment)
        record = {"task": body.task, "prompt": body.prompt, "target": body.target,
                  "subject": body.subject, "description": body.description,
                  "sentiment": body.sentiment, "metadata": body.metadata,
                  "instruction": s.editor.edit_input(edit_request), "created_at": _now()}
        result = await s.engine.create(edit_request, record,
                                       idempotency_key=request.headers.get("Idempotency-Key"))
        return _edit_out(result.edit)

    @app.get("/edits/{edit_id}", response_model=EditOut)
    async def get_edit(edit_id: str, request: Request) -> EditOut:
        return _edit_out(await live(request).engine.store.get(edit_id))

    @app.post("/edits/{edit_id}/rollback", response_model=EditOut)
    async def rollback_edit(edit_id: str, request: Request) -> EditOut:
        """Remove exactly this edit's delta; the record stays, marked ``rolled_back``."""
        s = live(request)
        return _edit_out(await s.engine.rollback(edit_id, by="api", at=_now()))

    @app.post("/generate", response_model=GenerateOut)
    async def generate(body: GenerateIn, request: Request) -> GenerateOut:
        """Greedy continuation by the live (edited) model."""
        s = live(request)

        def run() -> GenerateOut:
            with s.ledger.reading():
                text = greedy_continuations(s.model, s.tokenizer, [body.prompt],
                                            body.max_new_tokens)[0]
                return GenerateOut(text=text, version=s.ledger.version)

        return await asyncio.to_thread(run)

    return app
