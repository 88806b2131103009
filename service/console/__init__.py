"""The web console at ``/console``: the edits, one edit, a new edit, and a playground.

How it is built, and why:

- The pages are Jinja2 templates that render only each page's frame (navigation, forms,
  empty tables). They hold no data and need no key: a browser's navigation cannot send
  ``Authorization``, and the key must never travel in a URL.
- One small script, ``static/console.js`` (no framework, no build step, nothing from a
  CDN), fills them by calling the service's JSON API with the key the user entered once,
  kept in ``sessionStorage`` (this tab only) and sent as ``Authorization: Bearer``.
- Not htmx: htmx swaps in HTML rendered by the server, which would need a second,
  HTML-answering copy of every endpoint (auth, filters, paging, errors) kept in step with
  the API. Calling the API itself, the console can do exactly what any client can, and it
  shows the API's own structured errors. Its live updates read ``GET /events`` with
  ``fetch``, since ``EventSource`` (htmx's SSE extension too) cannot send the key.
- Every string from the API reaches the page as text, never as HTML, and the pages' CSP
  allows scripts and styles from the service alone.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

_HERE = Path(__file__).resolve().parent
_templates = Jinja2Templates(directory=_HERE / "templates")
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

router = APIRouter(prefix="/console", include_in_schema=False)


def install(app: FastAPI) -> None:
    """Serve the console's pages and its static files from ``app``."""
    app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=_HERE / "static"), name="console-static")


def _page(request: Request, template: str, **context: str) -> HTMLResponse:
    base = request.scope.get("root_path", "")
    return _templates.TemplateResponse(request, template, {"base": base, **context},
                                       headers=_HEADERS)


@router.get("", response_class=HTMLResponse)
async def edits_page(request: Request) -> HTMLResponse:
    """The edits, newest first, with filters and paging."""
    return _page(request, "edits.html", page="edits")


@router.get("/edits/{edit_id}", response_class=HTMLResponse)
async def edit_page(request: Request, edit_id: str) -> HTMLResponse:
    """One edit: its request, quality, what it superseded, and its rollback."""
    return _page(request, "edit.html", page="edit", edit_id=edit_id)


@router.get("/new", response_class=HTMLResponse)
async def new_edit_page(request: Request) -> HTMLResponse:
    """A form that posts a new edit and shows its outcome."""
    return _page(request, "new.html", page="new")


@router.get("/playground", response_class=HTMLResponse)
async def playground_page(request: Request) -> HTMLResponse:
    """A prompt answered by the live and the pristine model side by side."""
    return _page(request, "playground.html", page="playground")
