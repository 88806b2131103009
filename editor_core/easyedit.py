"""Convert an EasyEdit MEND / InstructEdit archive into this project's editor format.

EasyEdit saves ``torch.save({"model": state_dict, ...})``: per weight shape, under
``mend.(d_in, d_out).``, Welford buffers (``u_mean``, ``u_std``, ``v_mean``, ``v_std``,
``u_s``, ``v_s``, ``k``) and low-rank layers ``mlp.layers.<i>.{u, v, bias,
mode_scale.weight, mode_shift.weight}``; plus ``edit_lrs``, one per edited weight in the
order of its ``inner_params``. Its update is ``W + lr · Σ ũ δ̃ᵀ``; ours is ``W − α · Σ ũ δ̃ᵀ``,
so α = −lr. The network itself (``x + relu(scale ⊙ (u v x + b) + shift)``, normalisation
``(x − mean) / (std + 1e-7)``) is the same computation.

Reading the archive means unpickling it, which can run arbitrary code: this module is only
used by the explicit ``instructedit import-easyedit`` command, never by the server.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .checkpoint import model_fingerprint, save_editor
from .editor import Editor
from .hypernetwork import Hypernetwork, HypernetworkConfig
from .instructions import InstructionRegistry
from .specs import resolve_editable

logger = logging.getLogger(__name__)

UNPICKLE_WARNING = (
    "Reading an EasyEdit archive unpickles it, which can execute arbitrary code. Only import "
    "archives you trust.")

_SHAPE_KEY = re.compile(r"^mend\.\((\d+), (\d+)\)\.")


class ArchiveError(ValueError):
    """An archive that is not a shared-mode EasyEdit MEND archive for this model."""


def _state_dict(archive: Any) -> dict[str, Any]:
    if isinstance(archive, dict) and isinstance(archive.get("model"), dict):
        return archive["model"]
    if isinstance(archive, dict) and "edit_lrs" in archive:
        return archive
    raise ArchiveError("no EasyEdit state dict found (expected {'model': {...}} with edit_lrs)")


def convert_state_dict(state: dict[str, Any], model: PreTrainedModel,
                       inner_params: list[str] | None = None) -> Hypernetwork:
    """Our hypernetwork carrying the archive's weights (``inner_params`` in EasyEdit's order)."""
    state = {k.replace("gtn.", "mend.", 1): v for k, v in state.items()
             if isinstance(v, torch.Tensor)}
    if "edit_lrs" not in state:
        raise ArchiveError("archive has no 'edit_lrs'")
    if any(k.startswith("mend.") and "#" in k for k in state):
        raise ArchiveError("archive was trained with per-weight (non-shared) networks; only "
                           "the shared mode (one network per weight shape) is supported")
    editable = resolve_editable(model, inner_params)
    lrs = state["edit_lrs"].detach().float().flatten()
    if lrs.numel() != len(editable):
        raise ArchiveError(f"archive has {lrs.numel()} step sizes but {len(editable)} editable "
                           f"weights were named: {[w.name for w in editable]}")
    by_shape: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        m = _SHAPE_KEY.match(key)
        if m:
            by_shape.setdefault(f"{m.group(1)}x{m.group(2)}", {})[key[m.end():]] = value
    missing = {w.shape_key for w in editable} - set(by_shape)
    if missing:
        raise ArchiveError(f"archive has no network for weight shape(s) {sorted(missing)}; "
                           f"it has {sorted(by_shape)}")
    n_blocks = len({k.split(".")[2] for k in next(iter(by_shape.values())) if
                    k.startswith("mlp.layers.")})
    first = next(iter(by_shape.values()))
    rank = first["mlp.layers.0.u"].shape[1]
    hyper = Hypernetwork(editable, HypernetworkConfig(rank=rank, n_blocks=n_blocks,
                                                      init_step_size=0.0))
    with torch.no_grad():
        for key, net in hyper.nets.items():
            src = by_shape[key]
            k = float(src["k"].flatten()[0])
            if not k >= 2:
                raise ArchiveError(f"network {key} has no normalisation statistics (k={k})")
            for ours, side in ((net.norm_u, "u"), (net.norm_delta, "v")):
                ours.count.fill_(k)
                ours.mean.copy_(src[f"{side}_mean"].double())
                ours.m2.copy_(src[f"{side}_std"].double() ** 2 * (k - 1))
            for i, block in enumerate(net.blocks):
                layer = f"mlp.layers.{i}."
                if block.U.shape != src[layer + "u"].shape:
                    raise ArchiveError(f"{key} layer {i}: u is {tuple(src[layer + 'u'].shape)},"
                                       f" expected {tuple(block.U.shape)}")
                block.U.copy_(src[layer + "u"])
                block.V.copy_(src[layer + "v"])
                block.bias.copy_(src[layer + "bias"])
                block.scale.copy_(src[layer + "mode_scale.weight"])
                block.shift.copy_(src[layer + "mode_shift.weight"])
        hyper.step_sizes.copy_(-lrs)  # EasyEdit adds the update; we subtract it
    return hyper.eval()


def import_easyedit(archive_path: str | Path, model: PreTrainedModel,
                    tokenizer: PreTrainedTokenizerBase, out_dir: str | Path, *,
                    inner_params: list[str] | None = None,
                    use_instructions: bool = False) -> Path:
    """Unpickle an EasyEdit archive (trusted files only), convert it, save it in our format."""
    logger.warning(UNPICKLE_WARNING)
    archive = torch.load(archive_path, map_location="cpu", weights_only=False)
    hyper = convert_state_dict(_state_dict(archive), model, inner_params)
    editor = Editor(model, tokenizer, hyper, InstructionRegistry(),
                    use_instructions=use_instructions)
    return save_editor(out_dir, editor,
                       base_fingerprint=model_fingerprint(model, hyper.editable, tokenizer),
                       training={"imported_from": str(archive_path), "source": "EasyEdit"})
