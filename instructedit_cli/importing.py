"""Importing editors trained elsewhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app


@app.command("import-easyedit")
def import_easyedit_cmd(
    archive: Annotated[Path, typer.Argument(help="EasyEdit MEND/InstructEdit archive (.pt)")],
    model: Annotated[Path, typer.Option(help="the base model it was trained for (HF format)")],
    out: Annotated[Path, typer.Option(help="output folder for the converted editor")],
    params: Annotated[Optional[list[str]], typer.Option(
        "--param", help="edited weight names in the order of EasyEdit's inner_params "
        "(repeat; default: the model family's default MLP weights)")] = None,
    instructions: Annotated[bool, typer.Option(
        help="the archive is an InstructEdit editor (wrap inputs in task instructions)")] = False,
) -> None:
    """Convert an EasyEdit archive to this project's editor format
    (unpickles: trusted files only)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from editor_core.easyedit import UNPICKLE_WARNING, import_easyedit

    typer.secho(f"WARNING: {UNPICKLE_WARNING}", fg=typer.colors.YELLOW, err=True)
    lm = AutoModelForCausalLM.from_pretrained(model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    path = import_easyedit(archive, lm, tokenizer, out, inner_params=params,
                           use_instructions=instructions)
    typer.echo(f"Wrote {path}")
