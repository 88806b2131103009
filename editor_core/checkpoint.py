"""Editor checkpoints (safetensors + JSON) and the fingerprints that bind edits to a model.

``editor.safetensors`` holds the hypernetwork (networks, frozen normalisation statistics,
step sizes); ``editor_config.json`` holds everything needed to rebuild and check it:
editable weights and shapes, network config, step sizes, instruction registry, the base
model's fingerprint and a training summary. Nothing here unpickles.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .combination import CombinationConfig
from .editor import Editor
from .hypernetwork import Hypernetwork, HypernetworkConfig
from .instructions import InstructionRegistry
from .relation_forms import RelationForms
from .routing_config import RoutingConfig
from .specs import EditableWeight, resolve_editable

FORMAT_VERSION = 1
WEIGHTS_FILE = "editor.safetensors"
CONFIG_FILE = "editor_config.json"


class FingerprintMismatch(ValueError):
    """An editor (or stored edits) made for another base model."""


def weights_fingerprint(weights: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, shapes and fp32 values: the identity of the pristine weights."""
    h = hashlib.sha256()
    for name in sorted(weights):
        t = weights[name].detach().to(torch.float32).cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).numpy().tobytes())
    return h.hexdigest()


def model_fingerprint(model: PreTrainedModel, editable: list[EditableWeight],
                      tokenizer: PreTrainedTokenizerBase | None = None) -> str:
    """Identity of a base model for edits: call it on the pristine weights, before editing.

    It hashes the editable weights in full (as fp32 values: the same weights loaded in
    another dtype are another model for edits), every other parameter's name, shape and
    leading values (a different model shows there without hashing gigabytes), and the
    tokenizer's vocabulary.
    """
    params = dict(model.named_parameters())
    names = {w.name for w in editable}
    h = hashlib.sha256(weights_fingerprint({n: params[n] for n in names}).encode())
    for name, p in params.items():
        if name not in names:
            head = p.detach().reshape(-1)[:1024].to(torch.float32).cpu()
            h.update(f"{name}:{tuple(p.shape)};".encode())
            h.update(head.numpy().tobytes())
    if tokenizer is not None:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    return h.hexdigest()


def editor_fingerprint(hypernetwork: Hypernetwork) -> str:
    return weights_fingerprint(hypernetwork.state_dict())


def save_editor(out_dir: str | Path, editor: Editor, *, base_fingerprint: str,
                training: dict[str, Any] | None = None,
                combination: CombinationConfig | None = None) -> Path:
    """Write the editor's weights and config (its edits combined by ``combination``,
    default the editor's own); returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hyper = editor.hypernetwork
    state = {k: v.detach().cpu().contiguous() for k, v in hyper.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "instructedit-editor"})
    config = {
        "format_version": FORMAT_VERSION,
        "editable": [{"name": w.name, "d_in": w.d_in, "d_out": w.d_out,
                      "transposed": w.transposed} for w in editor.editable],
        "hypernetwork": hyper.cfg.to_json(),
        "step_sizes": {w.name: hyper.step_size(w.name).item() for w in editor.editable},
        "use_instructions": editor.use_instructions,
        "combination": (combination or editor.combination).to_json(),
        "instructions": editor.registry.to_json(),
        "base_model_fingerprint": base_fingerprint,
        "editor_fingerprint": editor_fingerprint(hyper),
        "training": training or {},
    }
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return out


def read_editor_config(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / CONFIG_FILE).read_text())


def load_editor(path: str | Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                *, check_fingerprint: bool = True, fp32_replica: bool = True,
                basis: str = "current", combination: CombinationConfig | None = None
                ) -> Editor:
    """Rebuild an editor for ``model``; refuses a model other than the one it was made for.
    Its edits combine by ``combination`` (default: the one it was trained for).

    Load it before any edit is applied: the fingerprint is of the pristine model.
    """
    path = Path(path)
    config = read_editor_config(path)
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported editor format {config.get('format_version')!r}")
    names = [e["name"] for e in config["editable"]]
    editable = resolve_editable(model, names)
    for w, e in zip(editable, config["editable"]):
        if (w.d_in, w.d_out, w.transposed) != (e["d_in"], e["d_out"], e["transposed"]):
            raise FingerprintMismatch(
                f"{w.name} is ({w.d_in}, {w.d_out}, transposed={w.transposed}) in the model "
                f"but ({e['d_in']}, {e['d_out']}, transposed={e['transposed']}) in the editor "
                f"at {path}")
    if check_fingerprint:
        found = model_fingerprint(model, editable, tokenizer)
        expected = config["base_model_fingerprint"]
        if found != expected:
            raise FingerprintMismatch(
                f"the editor at {path} was made for base model {expected[:16]}…, "
                f"but the model given has fingerprint {found[:16]}…")
    hyper = Hypernetwork(editable, HypernetworkConfig(**config["hypernetwork"]))
    hyper.load_state_dict(load_file(str(path / WEIGHTS_FILE)), strict=True)
    if editor_fingerprint(hyper) != config["editor_fingerprint"]:
        raise FingerprintMismatch(f"{path / WEIGHTS_FILE} does not match the fingerprint in "
                                  f"{CONFIG_FILE}: the files come from different editors")
    hyper.eval()
    device = next(model.parameters()).device
    hyper.to(device)
    registry = InstructionRegistry.from_json(config["instructions"])
    if combination is None:
        combination = CombinationConfig.from_json(config.get("combination", {}))
    editor = Editor(model, tokenizer, hyper, registry,
                    use_instructions=config.get("use_instructions", True),
                    fp32_replica=fp32_replica, combination=combination, basis=basis)
    editor.relation_forms = RelationForms.load(path)
    return editor


ROUTING_FILE = "routing.safetensors"


def save_routing(path: str | Path, routing: RoutingConfig) -> None:
    """Write the edit memory's calibrated routing beside the editor it was calibrated for."""
    meta = {"gate": routing.gate, "threshold": repr(routing.threshold),
            "subjectless_threshold": repr(routing.subjectless_threshold)}
    tensors = {name: t.contiguous() for name, t in (("mean", routing.mean),
                                                    ("projection", routing.projection))
               if t is not None}
    save_file(tensors, str(Path(path) / ROUTING_FILE), metadata=meta)


def load_routing(path: str | Path) -> RoutingConfig:
    """The routing an editor folder ships (``instructedit calibrate-routing`` writes it)."""
    file = Path(path) / ROUTING_FILE
    if not file.exists():
        raise FileNotFoundError(f"{file} is missing: calibrate the edit memory's routing "
                                "for this editor (instructedit calibrate-routing)")
    with safe_open(str(file), "pt") as f:
        meta = f.metadata()
        found = {name: f.get_tensor(name) for name in ("mean", "projection") if name in f.keys()}
    return RoutingConfig(meta["gate"], float(meta["threshold"]),
                         float(meta["subjectless_threshold"]), **found)
