"""The ``instructedit`` command: its Typer app and the options every command group shares."""

from __future__ import annotations

from editor_core import runtime  # sets OMP_WAIT_POLICY before torch loads

# isort: split

import dataclasses
import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, get_args, get_origin, get_type_hints

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


def config_options(config_type: type, prefix: str, param: str) -> Callable:
    """Give a command one ``--{prefix}-{field}`` option per field of the dataclass
    ``config_type`` (its type, default and description, written once on the field: see
    ``editor_core.knobs``) in place of its parameter ``param``, which receives them as one
    ``config_type``; a value out of the field's bounds is refused as a bad option."""
    hints = get_type_hints(config_type)
    knobs = dataclasses.fields(config_type)

    def option(f: dataclasses.Field) -> inspect.Parameter:
        kind, default = hints[f.name], f.default
        if get_origin(kind) is tuple:  # tuple[float, ...]: the option is repeated
            kind, default = list[get_args(kind)[0]], list(default)
        return inspect.Parameter(
            f"{prefix}_{f.name}", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default,
            annotation=Annotated[kind, typer.Option(help=f.metadata.get("description", "") + (
                " (repeat the option for each)" if isinstance(default, list) else ""))])

    def wrap(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        params = []
        for p in signature.parameters.values():
            params += [option(f) for f in knobs] if p.name == param else [p]

        @functools.wraps(command)
        def run(**kwargs: Any) -> Any:
            values = {f.name: kwargs.pop(f"{prefix}_{f.name}") for f in knobs}
            values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
            try:
                config = config_type(**values)
            except ValueError as e:
                raise typer.BadParameter(str(e)) from e
            return command(**kwargs, **{param: config})

        run.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        return run

    return wrap
