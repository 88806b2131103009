"""Which weights of a model the editor may change, and how each is oriented.

MEND edits the MLP weight matrices of the last few blocks. Models store them two ways:
GPT-2's ``Conv1D`` keeps ``(in, out)``, ``nn.Linear`` keeps ``(out, in)``. The editor works
in ``(d_in, d_out)`` everywhere and converts at the edge, reading the orientation from the
module that owns the weight rather than trusting the family name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D


@dataclass(frozen=True)
class FamilySpec:
    """Default editable weights of a model family: ``{i}`` is a block index."""

    name: str
    model_types: tuple[str, ...]
    blocks_attr: str  # config attribute holding the number of blocks
    patterns: tuple[str, ...]


FAMILIES: tuple[FamilySpec, ...] = (
    FamilySpec("gpt2", ("gpt2",), "n_layer",
               ("transformer.h.{i}.mlp.c_fc.weight", "transformer.h.{i}.mlp.c_proj.weight")),
    FamilySpec("gptj", ("gptj",), "n_layer",
               ("transformer.h.{i}.mlp.fc_in.weight", "transformer.h.{i}.mlp.fc_out.weight")),
    FamilySpec("gpt_neox", ("gpt_neox",), "num_hidden_layers",
               ("gpt_neox.layers.{i}.mlp.dense_h_to_4h.weight",
                "gpt_neox.layers.{i}.mlp.dense_4h_to_h.weight")),
    FamilySpec("llama", ("llama", "mistral", "qwen2", "qwen3"), "num_hidden_layers",
               ("model.layers.{i}.mlp.gate_proj.weight", "model.layers.{i}.mlp.up_proj.weight",
                "model.layers.{i}.mlp.down_proj.weight")),
)

DEFAULT_LAST_BLOCKS = 3


class EditableWeightError(ValueError):
    """An editable-weight name that the model does not have, or a model with no defaults."""


@dataclass(frozen=True)
class EditableWeight:
    """One editable weight matrix.

    ``transposed`` is True for ``nn.Linear`` (stored ``(out, in)``): the editor's
    ``(d_in, d_out)`` view is then ``weight.T``.
    """

    name: str
    module_name: str
    d_in: int
    d_out: int
    transposed: bool

    @property
    def shape_key(self) -> str:
        """Weights of one ``(d_in, d_out)`` shape share a hypernetwork."""
        return f"{self.d_in}x{self.d_out}"

    def as_in_out(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.T if self.transposed else weight

    def to_stored(self, delta_in_out: torch.Tensor) -> torch.Tensor:
        return delta_in_out.T if self.transposed else delta_in_out


def family_of(model: PreTrainedModel) -> FamilySpec:
    model_type = getattr(model.config, "model_type", None)
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    known = sorted(t for f in FAMILIES for t in f.model_types)
    raise EditableWeightError(
        f"no default editable weights for model type {model_type!r} (known: {known}); "
        "pass the parameter names explicitly")


def default_editable_names(model: PreTrainedModel, last_blocks: int = DEFAULT_LAST_BLOCKS
                           ) -> list[str]:
    """The MLP weights of the last ``last_blocks`` blocks, in block order."""
    family = family_of(model)
    n_blocks = getattr(model.config, family.blocks_attr)
    first = max(0, n_blocks - last_blocks)
    return [p.format(i=i) for i in range(first, n_blocks) for p in family.patterns]


def resolve_editable(model: PreTrainedModel, names: list[str] | None = None,
                     last_blocks: int = DEFAULT_LAST_BLOCKS) -> list[EditableWeight]:
    """Editable weights by explicit name, or the family default; unknown names are an error."""
    names = list(names) if names else default_editable_names(model, last_blocks)
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in params]
    if missing:
        candidates = [n for n, p in params.items() if p.dim() == 2 and n.endswith(".weight")]
        raise EditableWeightError(
            f"model has no parameter(s) {missing}; 2-D weights it does have: {candidates}")
    if len(set(names)) != len(names):
        raise EditableWeightError(f"editable weight names repeat: {names}")
    out = []
    for name in names:
        module_name = name.rsplit(".", 1)[0]
        module = modules[module_name]
        weight = params[name]
        if isinstance(module, Conv1D):
            d_in, d_out, transposed = weight.shape[0], weight.shape[1], False
        elif isinstance(module, nn.Linear):
            d_out, d_in, transposed = weight.shape[0], weight.shape[1], True
        else:
            raise EditableWeightError(
                f"{name} belongs to a {type(module).__name__}; only Linear and Conv1D "
                "weights can be edited")
        out.append(EditableWeight(name, module_name, d_in, d_out, transposed))
    return out
