"""Serving the live model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from editor_core import runtime

from .app import Threads, app


@app.command("serve")
def serve_cmd(
    host: Annotated[Optional[str], typer.Option(help="bind address")] = None,
    port: Annotated[Optional[int], typer.Option(help="port")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(
        help="where the embedded Redis keeps its files")] = None,
    model: Annotated[Optional[str], typer.Option(
        help="base model: HF folder or locally cached hub id")] = None,
    editor: Annotated[Optional[Path], typer.Option(help="trained editor folder")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="float32, bfloat16 or float16")] = None,
    redis_url: Annotated[Optional[str], typer.Option(
        help="an external Redis instead of the embedded one")] = None,
    threads: Threads = None,
) -> None:
    """Start the HTTP service: the demo LM and demo editor by default, with an embedded
    Redis unless REDIS_URL is set. Every option is also a setting (INSTRUCTEDIT_*)."""
    import uvicorn

    from service.app import create_app
    from service.logs import log_config
    from service.settings import ServiceSettings

    given = {"host": host, "port": port, "data_dir": data_dir, "threads": threads,
             "model": model, "editor": editor, "device": device, "dtype": dtype,
             "redis_url": redis_url}
    settings = ServiceSettings(**{k: v for k, v in given.items() if v is not None})
    runtime.configure_threads(settings.threads)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_config=log_config(settings.json_logs))
