"""The ``instructedit`` command: its Typer app and the options every command group shares."""

from __future__ import annotations

from editor_core import runtime  # sets OMP_WAIT_POLICY before torch loads

# isort: split

from pathlib import Path
from typing import Annotated, Optional

import typer

from service.settings import RuntimeSettings

app = typer.Typer(
    help="InstructEdit Server: edit a served language model's knowledge over HTTP.",
    no_args_is_help=True,
    add_completion=False,
)

Threads = Annotated[Optional[int], typer.Option(help="torch threads (default: settings)")]
DataDir = Annotated[Path, typer.Option(help="folder of {task}_{split}.json files")]
TaskList = Annotated[str, typer.Option(help="comma-separated tasks")]
SentimentJudgeName = Annotated[str, typer.Option(
    help="how ConvSent answers are judged: 'labels' (each case's labelled answers) or "
         "'world' (the demo world's sentiment words)")]


def named_path(item: str) -> tuple[str, Path]:
    """``NAME=FOLDER`` or ``FOLDER`` (named after the run: ``runs/x/best`` is ``x``)."""
    if "=" in item:
        name, path = item.split("=", 1)
        return name, Path(path)
    path = Path(item)
    return (path.parent.name if path.name in ("best", "last") else path.name), path


def setup(threads: int | None) -> RuntimeSettings:
    """Runtime settings, with torch's thread count applied."""
    settings = RuntimeSettings()
    runtime.configure_threads(settings.threads if threads is None else threads)
    return settings


def judge_named(name: str):
    """The ConvSent judge a command's ``--sentiment-judge`` names (None: the data's labels)."""
    if name == "labels":
        return None
    if name == "world":
        from editor_lab.world.sentiment import sentiment_of
        return sentiment_of
    raise typer.BadParameter(f"unknown sentiment judge {name!r}: labels or world")
