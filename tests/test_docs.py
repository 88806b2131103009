"""The documentation site: it builds strictly, its generated pages match the code, every
``curl`` example in it runs against a fresh service, and the README stays short."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from .server_process import ServiceProcess

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
EXAMPLE_BASE = "http://localhost:8000"
# A block after this comment shows an error on purpose: its last curl must get this status.
EXPECT = re.compile(r"<!--\s*expect-status:\s*(\d{3})\s*-->\s*$")
FENCE = re.compile(r"^```(\w*)\s*$")


def _load_gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", REPO / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("page", ["http-api.md", "configuration.md", "cli.md"])
def test_generated_pages_match_the_code(page: str) -> None:
    render = _load_gen_docs().PAGES[page]
    committed = (DOCS / page).read_text(encoding="utf-8")
    assert committed == render(), f"docs/{page} is stale: run scripts/gen_docs.py"


def test_site_builds_strictly(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-4000:]


def test_every_page_is_in_the_nav() -> None:
    nav = _nav_pages()
    assert sorted(nav) == sorted(p.name for p in DOCS.glob("*.md"))


def test_readme_is_at_most_12_kib() -> None:
    assert (REPO / "README.md").stat().st_size <= 12 * 1024


def _nav_pages() -> list[str]:
    """The site's pages in nav order."""

    def walk(items) -> Iterator[str]:
        for item in items:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            yield from walk(value) if isinstance(value, list) else [value]

    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    return list(walk(config["nav"]))


def _curl_blocks(path: Path) -> Iterator[tuple[str, str, int | None]]:
    """(where, script, expected status) of each shell block with a curl, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opened = FENCE.match(lines[i])
        if not opened or not opened.group(1):
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        body = "\n".join(lines[i + 1:end])
        if "curl " in body:
            assert opened.group(1) in ("bash", "sh"), \
                f"{path.name}:{i + 1}: write curl examples as bash blocks"
            expected = EXPECT.match(lines[i - 1]) if i else None
            yield (f"{path.name}:{i + 1}", body, int(expected.group(1)) if expected else None)
        i = end + 1


def _with_status(script: str) -> str:
    """The script with its last curl printing the HTTP status on a line of its own."""
    at = script.rindex("curl ") + len("curl ")
    return script[:at] + "-w '\\nHTTP_STATUS %{http_code}\\n' " + script[at:]


def test_curl_examples_run_against_a_fresh_service(tmp_path: Path) -> None:
    """Every page's examples in nav order, then the README's: each block runs in bash with
    errexit and pipefail, so a failing curl (-f) or a failing jq fails the test."""
    missing = [tool for tool in ("bash", "curl", "jq") if shutil.which(tool) is None]
    assert not missing, f"the docs' examples need {missing} installed"
    blocks = [b for page in _nav_pages() for b in _curl_blocks(DOCS / page)]
    blocks += list(_curl_blocks(REPO / "README.md"))
    assert len(blocks) >= 20  # an extraction that finds (almost) nothing is a bug
    service = ServiceProcess(tmp_path / "data").start()
    try:
        for where, script, expected in blocks:
            assert EXAMPLE_BASE in script, f"{where}: examples use {EXAMPLE_BASE}"
            script = script.replace(EXAMPLE_BASE, service.base)
            if expected is not None:
                script = _with_status(script)
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", script],
                                  capture_output=True, text=True, timeout=120, check=False)
            report = f"{where}\n{script}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
            assert done.returncode == 0, report
            if expected is not None:
                assert f"HTTP_STATUS {expected}" in done.stdout, report
    finally:
        service.stop()


def test_the_library_examples_run(tmp_path) -> None:
    """The library page's in-process editing examples (merged, and the edit memory) run as
    written from the repository root; the edit memory's answers with its edit and,
    pristine, without it. (Its data-loading example needs a file of the reader's.)"""
    blocks = [b for b in re.findall(r"```python\n(.*?)```",
                                    (REPO / "docs" / "library.md").read_text(), re.S)
              if "ledger" in b]
    assert len(blocks) == 2
    outputs = []
    for i, block in enumerate(blocks):
        script = tmp_path / f"example_{i}.py"
        script.write_text(block)
        done = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.append(done.stdout)
    assert " Veiistan. ('edit-1',)" in outputs[1] and outputs[1].splitlines()[-1] != " Veiistan."
