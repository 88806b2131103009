"""The deployment files agree with each other and with the code (no Docker engine needed):
compose services, ports, environment and mounted files; Prometheus and nginx targets;
Grafana's datasource; and every dashboard query names a metric a live service exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.settings import ServiceSettings

from .test_app import EDIT

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(REPO / "docker-compose.yml")


def dockerfile_env(path: Path) -> dict[str, str]:
    """The ENV settings of a Dockerfile (its ``KEY=value`` pairs, continuation lines too)."""
    text = path.read_text().replace("\\\n", " ")
    env = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    return env


# Environment variables the images and compose file may set that are not INSTRUCTEDIT_*
# settings (REDIS_URL is the settings' alias for the Redis URL).
OTHER_ENV = {"REDIS_URL", "OMP_WAIT_POLICY", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED",
             "PIP_NO_CACHE_DIR", "DEBIAN_FRONTEND", "PATH"}


def known_setting(name: str) -> bool:
    """An INSTRUCTEDIT_* variable must name a real setting (nested ones by their head)."""
    if name.startswith("INSTRUCTEDIT_"):
        field = name.removeprefix("INSTRUCTEDIT_").lower().split("__")[0]
        return field in ServiceSettings.model_fields
    return name in OTHER_ENV


def test_compose_services_ports_and_environment_agree_with_the_code(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "api", "lb", "prometheus", "grafana"}
    api = services["api"]
    assert (REPO / api["build"]["context"] / api["build"]["dockerfile"]).is_file()
    assert api["deploy"]["replicas"] >= 2
    assert all(known_setting(k) for k in api["environment"]), api["environment"]
    redis_url = re.fullmatch(r"redis://(\w+):(\d+)/\d+", api["environment"]["REDIS_URL"])
    assert redis_url and redis_url[1] == "redis" and redis_url[2] == "6379"
    command = services["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "everysec"
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])

    env = dockerfile_env(DOCKER / "Dockerfile")
    port = env["INSTRUCTEDIT_PORT"]
    assert api["expose"] == [port]
    assert f"EXPOSE {port}" in (DOCKER / "Dockerfile").read_text()
    assert services["lb"]["depends_on"]["api"]["condition"] == "service_healthy"

    for service in services.values():  # every bind-mounted file or folder is in the repo
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), source


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_images_run_as_a_user_with_a_healthcheck_and_the_demo_checkpoints(name: str) -> None:
    text = (DOCKER / name).read_text()
    env = dockerfile_env(DOCKER / name)
    assert all(known_setting(k) for k in env), env
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(rf"HEALTHCHECK .*127\.0\.0\.1:{env['INSTRUCTEDIT_PORT']}/healthz", text,
                     re.S)
    for setting in ("INSTRUCTEDIT_MODEL", "INSTRUCTEDIT_EDITOR"):
        inside = env[setting].removeprefix("/app/")
        assert f"COPY {inside} ./{inside}" in text
        assert (REPO / inside).is_dir()
    assert 'CMD ["instructedit", "serve"]' in text
    copied = set(re.findall(r"^COPY (\w+) \./\1$", text, re.M))
    assert _served_packages() <= copied, "the image lacks a package `instructedit serve` imports"
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    if name.endswith(".cuda"):
        assert env["INSTRUCTEDIT_DEVICE"] == "cuda"
    gpu = load_yaml(REPO / "docker-compose.gpu.yml")["services"]["api"]
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.cuda"


def test_prometheus_nginx_and_grafana_point_at_the_compose_services(compose: dict) -> None:
    services = compose["services"]
    port = int(dockerfile_env(DOCKER / "Dockerfile")["INSTRUCTEDIT_PORT"])
    scrape = load_yaml(DOCKER / "prometheus.yml")["scrape_configs"]
    assert [c["metrics_path"] for c in scrape] == ["/metrics"]
    (sd,) = scrape[0]["dns_sd_configs"]
    assert sd["names"] == ["api"] and sd["port"] == port  # each replica, not the lb

    nginx = (DOCKER / "nginx.conf").read_text()
    assert re.search(rf"server api:{port}\b", nginx)
    assert "proxy_buffering off" in nginx  # streamed generations pass through as written
    assert services["lb"]["volumes"] == ["./docker/nginx.conf:/etc/nginx/conf.d/default.conf:ro"]

    (source,) = load_yaml(DOCKER / "grafana/provisioning/datasources/prometheus.yml"
                          )["datasources"]
    prometheus_port = services["prometheus"]["ports"][0].split(":")[1]
    assert source["url"] == f"http://prometheus:{prometheus_port}"
    (provider,) = load_yaml(DOCKER / "grafana/provisioning/dashboards/instructedit.yml"
                            )["providers"]
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    assert mounts["./docker/grafana/dashboards"] == provider["options"]["path"]
    dashboard = json.loads((DOCKER / "grafana/dashboards/instructedit.json").read_text())
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == source["uid"]
        assert all(t["datasource"]["uid"] == source["uid"] for t in panel["targets"])


def test_every_dashboard_query_names_a_metric_the_service_exports(redis_socket: str,
                                                                  tmp_path: Path) -> None:
    settings = ServiceSettings(redis_url=f"unix://{redis_socket}", data_dir=tmp_path,
                               threads=2)
    with TestClient(create_app(settings)) as client:  # exercise every kind of metric
        made = client.post("/edits", json=EDIT)
        assert made.status_code == 201
        client.post("/generate", json={"prompt": "Hello", "max_new_tokens": 3})
        client.post(f"/edits/{made.json()['id']}/rollback")
        client.post("/edits", json={**EDIT, "task": "nope"})  # an error, by code
        exported = client.get("/metrics").text
    samples = {s.name for family in text_string_to_metric_families(exported)
               for s in family.samples}
    dashboard = json.loads((DOCKER / "grafana/dashboards/instructedit.json").read_text())
    queried = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"\b(instructedit_[a-z0-9_]+)", target["expr"])}
    assert len(dashboard["panels"]) >= 10 and len(queried) >= 12
    assert queried <= samples, sorted(queried - samples)


def _served_packages() -> set[str]:
    """The project's packages that ``instructedit serve`` imports (a fresh process)."""
    import subprocess
    import sys

    code = ("import sys, instructedit_cli, service.app; print(' '.join(sorted({m.split('.')[0] "
            "for m in sys.modules})))")
    names = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, cwd=REPO).stdout.split()
    return {n for n in names if (REPO / n / "__init__.py").exists()}


def image_contents(dockerfile: Path, root: Path) -> Path:
    """What the Dockerfile's COPY lines put into the image, laid out under ``root`` as
    they are under its WORKDIR; the WORKDIR's stand-in."""
    text = dockerfile.read_text().replace("\\\n", " ")
    workdir = None
    for line in text.splitlines():
        if line.startswith("WORKDIR "):
            workdir = root / line.split()[1].lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif line.startswith("COPY "):
            *sources, target = line.split()[1:]
            assert workdir is not None and not any(s.startswith("--") for s in sources)
            for source in sources:
                into = workdir / target
                if (REPO / source).is_dir():
                    shutil.copytree(REPO / source, into if len(sources) == 1 else
                                    into / Path(source).name,
                                    ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    into.mkdir(parents=True, exist_ok=True) if target.endswith("/") else None
                    shutil.copy(REPO / source, into / Path(source).name
                                if target.endswith("/") else into)
    assert workdir is not None
    return workdir


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_the_images_contents_start_serve_help(name: str, tmp_path: Path) -> None:
    """The image's own files (its COPY lines, under its WORKDIR) start ``instructedit serve
    --help`` as its CMD's entry point would, with nothing of this checkout on the path:
    only those files and the third-party libraries (``python -S``: no editable install)."""
    app = image_contents(DOCKER / name, tmp_path / "image")
    env = {k: v.replace("/app/", f"{app}/") for k, v in dockerfile_env(DOCKER / name).items()}
    site_packages = sysconfig.get_paths()["purelib"]
    entry_point = dict(re.findall(r'^(\w+) = "([\w.:]+)"$', (REPO / "pyproject.toml").read_text(),
                                  re.M))["instructedit"]
    module, function = entry_point.split(":")
    script = (f"import sys; import {module}; assert {module}.__file__.startswith("
              f"{str(app)!r}), {module}.__file__; sys.argv = ['instructedit', 'serve', "
              f"'--help']; {module}.{function}()")
    run = subprocess.run([sys.executable, "-S", "-c", script], cwd=tmp_path, env={
        **env, "PATH": os.environ["PATH"], "HOME": str(tmp_path),
        "PYTHONPATH": os.pathsep.join([str(app), site_packages]),
        "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    for option in ("--port", "--model", "--editor", "--redis-url", "--data-dir"):
        assert option in run.stdout, (option, run.stdout[-2000:])
