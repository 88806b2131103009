"""The ``instructedit`` command line, run in-process."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from service.cli import app

from .conftest import read_json

runner = CliRunner()


def test_build_world_writes_the_task_files(tmp_path: Path) -> None:
    result = runner.invoke(app, ["build-world", "--out", str(tmp_path), "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "| counterfact |" in result.output
    counts = read_json(tmp_path / "counts.json")
    for name, by_split in counts.items():
        for split, n in by_split.items():
            assert len(read_json(tmp_path / f"{name}_{split}.json")) == n > 0


def test_serve_starts_a_real_process_with_embedded_redis(tmp_path: Path) -> None:
    """``instructedit serve`` with no Redis configured: edit and generate over HTTP."""
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL",
                                                            "INSTRUCTEDIT_REDIS_URL")}
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port),
                             "--data-dir", str(tmp_path / "data")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.3)
        edit = httpx.post(f"{base}/edits", timeout=60, json={
            "task": "counterfact", "prompt": "Plyndti Brynta is a citizen of",
            "target": "Veiistan", "subject": "Plyndti Brynta"})
        assert edit.status_code == 201, edit.text
        answer = httpx.post(f"{base}/generate", timeout=60, json={
            "prompt": "Plyndti Brynta is a citizen of", "max_new_tokens": 6}).json()
        assert answer["text"].strip().startswith("Veiistan") and answer["version"] == 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert any((tmp_path / "data").iterdir())  # the embedded Redis kept its files there


def test_eval_lm_writes_json_and_table(tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    result = runner.invoke(app, ["eval-lm", "--limit", "25", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["known_facts"]["probes"] == 25 * 7 * 2
    assert "| Known facts, subject by name, all templates |" in result.output


def test_build_demo_lm_end_to_end_on_a_tiny_model(tmp_path: Path) -> None:
    out = tmp_path / "lm"
    result = runner.invoke(app, ["build-demo-lm", "--out", str(out), "--epochs", "1",
                                 "--n-layer", "2", "--n-embd", "32", "--eval-limit", "10"])
    assert result.exit_code == 0, result.output
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.n_layer == 2 and len(tokenizer) == model.config.vocab_size
    card = (out / "README.md").read_text()
    assert "instructedit build-demo-lm" in card and "| acceptance check | pass |" in card
    summary = read_json(out / "training_summary.json")
    assert summary["config"]["epochs"] == 1 and summary["steps"] > 0
