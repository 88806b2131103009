"""The HTTP API: a thin FastAPI layer over the edit engine and the live model.

Every error body is ``{"error": {"code", "message", "details"}}``, counted in
``instructedit_errors{code}``. Requests carry an ``X-Request-ID`` (the client's or a new
one) into the logs and back out. Bodies above the configured size are refused (413) as
they are read, before anything is parsed: by the declared Content-Length, or by counting
the bytes of a chunked body.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus

from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_fastapi_instrumentator import Instrumentator
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import KeyRing
from .console import install as install_console
from .errors import ServiceError
from .handlers import Handlers
from .lifecycle import LiveService
from .logs import valid_request_id
from .metrics import ServiceMetrics
from .routes import completions, edits, events, model, system
from .schemas import ErrorBody, ErrorOut
from .settings import ServiceSettings
from .store import StoreError

_STORE_STATUS = {"not_found": 404, "conflict": 409, "store_unconfirmed": 503}
_ERRORS = {status: {"model": ErrorOut} for status in (400, 401, 403, 404, 409, 413, 422, 429,
                                                      503)}


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.live = await LiveService.start(settings, metrics)
        app.state.handlers = Handlers.build(app.state.live)
        try:
            yield
        finally:
            await app.state.live.stop()

    app = FastAPI(title="InstructEdit Server", version="0.1.0", lifespan=lifespan,
                  responses=_ERRORS,
                  description="Edit a served language model's knowledge while it runs: "
                  "every edit is measured, stored in Redis, versioned and exactly "
                  "reversible.")
    app.state.api_keys = KeyRing(settings.api_keys)
    app.state.metrics = metrics
    app.include_router(edits.router)
    app.include_router(model.router)
    app.include_router(system.router)
    app.include_router(completions.router)
    app.include_router(events.router)
    install_console(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.limits.max_body_bytes)
    app.add_middleware(CorrelationIdMiddleware, header_name="X-Request-ID",
                       validator=valid_request_id)
    Instrumentator(registry=metrics.registry, excluded_handlers=["/metrics"]).instrument(
        app, metric_namespace="instructedit").expose(app, tags=["service"])
    _add_error_handlers(app, metrics)
    return app


class BodySizeLimit:
    """Raise a 413 HTTPException from ``receive`` once a body is known to be too large.

    Starlette's own limiter answers in plain text; raised from ``receive``, the error
    reaches the app's handlers like any other and gets the API's error body.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            if declared.isdigit() and int(declared) > self.max_bytes:
                raise self._too_large()
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise self._too_large()
            return message

        await self.app(scope, limited, send)

    def _too_large(self) -> HTTPException:
        return HTTPException(413, f"the body is larger than {self.max_bytes} bytes")


def _add_error_handlers(app: FastAPI, metrics: ServiceMetrics) -> None:
    def error(status: int, code: str, message: str, details: dict | None = None,
              headers: dict | None = None) -> JSONResponse:
        metrics.errors.labels(code).inc()
        body = ErrorOut(error=ErrorBody(code=code, message=message, details=details or {}))
        return JSONResponse(body.model_dump(), status_code=status, headers=headers)

    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        headers = {"Retry-After": "1"} if exc.status in (429, 503) else None
        if exc.status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return error(exc.status, exc.code, exc.message, exc.details, headers)

    @app.exception_handler(StoreError)
    async def store_error(_: Request, exc: StoreError) -> JSONResponse:
        status = _STORE_STATUS.get(exc.code, 400)
        return error(status, exc.code, str(exc),
                     headers={"Retry-After": "1"} if status == 503 else None)

    async def store_unavailable(_: Request, exc: Exception) -> JSONResponse:
        return error(503, "store_unavailable", "the edit store (Redis) does not answer; "
                     "generation still works. An edit interrupted after it was stored is "
                     "applied once Redis is back: retry with the same Idempotency-Key",
                     {"type": type(exc).__name__}, {"Retry-After": "1"})

    app.add_exception_handler(RedisConnectionError, store_unavailable)
    app.add_exception_handler(RedisTimeoutError, store_unavailable)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
                    for e in exc.errors()]
        if any(p["type"] == "json_invalid" for p in problems):
            return error(400, "malformed_json", "the body is not valid JSON (in UTF-8)",
                         {"errors": problems})
        return error(422, "invalid_request", "the request does not match the schema",
                     {"errors": problems})

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        status = exc.status_code
        code = {400: "malformed_body", 413: "body_too_large"}.get(
            status, HTTPStatus(status).phrase.lower().replace(" ", "_"))
        message = ("the body could not be parsed (is it JSON in UTF-8?)" if status == 400
                   else str(exc.detail))
        return error(status, code, message, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        return error(500, "internal_error", "the service failed to handle this request",
                     {"type": type(exc).__name__})
