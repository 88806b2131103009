"""Edit latency: one edit computation against one plain forward+backward of the base model
on the same input (batches of 1, 8, 64), the apply and persist phases, FT-L as the baseline
editor, and the same edit benchmark in a configuration comparable with published MEND
figures."""

from __future__ import annotations

import asyncio
import statistics

import redis.asyncio as aioredis
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from editor_core.data.records import EditCase
from editor_core.editor import EditRequest, Editor
from editor_core.encoding import EncodedBatch, target_nll
from editor_core.hypernetwork import Hypernetwork, HypernetworkConfig
from editor_core.specs import resolve_editable
from editor_lab.evaluation.methods import FineTuneMethod
from service.claims import claims
from service.engine import stored_record
from service.schemas import EditRecord
from service.store import EditStore, NewEdit

from .timing import interleaved, ms
from .workload import DEMO_LM, Workload, edit_requests


def _forward_backward(model, batch) -> None:
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    target_nll(logits, batch.labels).sum().backward()


def _compute(editor: Editor, requests: list[EditRequest]) -> None:
    """One edit computation: the editing gradient through the hypernetwork into each
    request's low-rank delta (with its keys), as MEND's own edit computation."""
    editor.compute(requests)


def _compute_and_store_form(editor: Editor, requests: list[EditRequest]) -> None:
    """What the service does per edit request: one editor pass, then each request's delta
    in its stored form (compressed factors and keys)."""
    for delta in editor.compute(requests).split():
        delta.compressed()


def compute_vs_forward_backward(w: Workload, batches: tuple[int, ...], repeats: int
                                ) -> list[dict]:
    return [_compute_vs_forward_backward_at(w, size, repeats) for size in batches]


def _compute_vs_forward_backward_at(w: Workload, size: int, repeats: int) -> dict:
    requests = edit_requests(size)
    encoded = w.editor.encode(requests)
    batch = EncodedBatch(encoded.input_ids.to(w.device),
                         encoded.attention_mask.to(w.device), encoded.labels.to(w.device))
    medians = interleaved({
        "fwdbwd": lambda: (_forward_backward(w.model, batch), w.sync()),
        "edit": lambda: (_compute(w.editor, requests), w.sync()),
        "stored": lambda: (_compute_and_store_form(w.editor, requests), w.sync()),
    }, repeats=max(3, repeats // max(1, size // 8)))
    w.model.zero_grad(set_to_none=True)
    return {"batch": size, "fwdbwd_ms": medians["fwdbwd"],
            "edit_ms": medians["edit"], "edit_ms_per_edit": medians["edit"] / size,
            "edit_over_fwdbwd": medians["edit"] / medians["fwdbwd"],
            "with_stored_form_ms": medians["stored"]}


def apply_and_persist(w: Workload, redis_url: str, active: int, repeats: int) -> dict:
    """Median ms to apply one edit to the live weights with ``active`` edits already in
    them (the service's edit memory), and to store one edit in Redis."""
    deltas = w.deltas(active + repeats)
    ledger = w.stack().ledger
    for i in range(active):
        ledger.apply(f"e{i}", deltas[i])
    apply_ms = statistics.median(
        ms(lambda i=i: ledger.apply(f"n{i}", deltas[active + i])) for i in range(repeats))
    ledger.reset()

    async def persist() -> float:
        client = aioredis.from_url(redis_url)
        store = EditStore(client, "bench-persist")
        blob = deltas[0].to_bytes()
        times = []
        for i in range(repeats):
            start = asyncio.get_running_loop().time()
            record = EditRecord(task="counterfact", prompt=f"p{i}", target="t",
                                instruction=f"p{i}", created_at="", created_by="bench")
            await store.add([NewEdit(stored_record(record), blob, claims(record))])
            times.append((asyncio.get_running_loop().time() - start) * 1e3)
        await client.flushdb()
        await client.aclose()
        return statistics.median(times)

    return {"active": active, "apply_ms": apply_ms, "persist_ms": asyncio.run(persist())}


def fine_tuning_baseline(w: Workload, steps: int, repeats: int) -> dict:
    """FT-L (``steps`` Adam steps on the same editable weights) against one edit
    computation, on the same request."""
    request = edit_requests(1)[0]
    record = EditCase(request.task, request.subject or "", request.prompt, request.target)
    ftl = FineTuneMethod(w.model, w.tokenizer, w.editor.editable, steps=steps)

    def fine_tune() -> None:
        ftl.apply(record)
        w.sync()
        ftl.restore()

    medians = interleaved({"ftl": fine_tune,
                           "edit": lambda: _compute_and_store_form(w.editor, [request])},
                          repeats=repeats)
    return {"steps": steps, "ftl_ms": medians["ftl"], "edit_ms": medians["edit"],
            "ftl_over_edit": medians["ftl"] / medians["edit"]}


def peer_comparable(device: str, repeats: int) -> dict:
    """A random-weight GPT-2 of 6 blocks, width 256, 8 heads and GPT-2's 50,257-token
    vocabulary (17.9M parameters), editing the last 3 blocks' MLP weights with a rank-256
    hypernetwork, on ≈10-token prompts without instructions: the configuration in which the
    public MEND implementation takes ≈65 ms per edit computation on our machines."""
    torch.manual_seed(0)
    config = GPT2Config(n_layer=6, n_embd=256, n_head=8, vocab_size=50257, n_positions=1024)
    model = GPT2LMHeadModel(config).eval().to(device)
    tokenizer = AutoTokenizer.from_pretrained(DEMO_LM)  # its ids fit the larger vocabulary
    hyper = Hypernetwork(resolve_editable(model, last_blocks=3),
                         HypernetworkConfig(rank=256)).eval().to(device)
    editor = Editor(model, tokenizer, hyper, use_instructions=False)
    request = edit_requests(1)[0]
    tokens = len(editor.encode([request]).input_ids[0])
    medians = interleaved({"edit": lambda: _compute(editor, [request]),
                           "stored": lambda: _compute_and_store_form(editor, [request])},
                          repeats=repeats)
    return {"parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
            "tokens": tokens, "edit_ms": medians["edit"],
            "with_stored_form_ms": medians["stored"], "reference_mend_ms": 65.0,
            "speedup_over_reference": 65.0 / medians["edit"]}
