"""The web console in a real browser (headless Chromium driven by Playwright) against a real
``instructedit serve`` process with API keys; and, over plain HTTP, the two API features the
console is built on: ``/generate``'s pristine answer and the edit log's event stream.

The service runs with refinement off (``refine.max_steps`` 0): the CounterFact edit below
holds one-shot on the demo model, and an unfamiliar fact with a rephrase is refused, so
both outcomes show in the browser. The run saves its screenshots under pytest's temporary
folder; with ``INSTRUCTEDIT_DOCS_IMAGES=1`` it writes them into ``docs/images`` instead (how
the console page's pictures are regenerated), so a plain test run never changes the tree.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import DEMO_CHAT_EDITOR_PATH, DEMO_CHAT_LM_PATH, ServiceSettings

from .server_process import ServiceProcess

READ_KEY, EDIT_KEY = "read-key-0123456789", "edit-key-0123456789"
READ = {"Authorization": f"Bearer {READ_KEY}"}
EDIT = {"Authorization": f"Bearer {EDIT_KEY}"}
PROMPT, TARGET, SUBJECT = "Plyndti Brynta is a citizen of", "Veiistan", "Plyndti Brynta"
LOCALITY = "The capital of Veiistan is"
KNOWN = {"task": "counterfact", "prompt": PROMPT, "target": TARGET, "subject": SUBJECT}
# Another client's edit (it holds one-shot too): its employer, which the demo LM knows.
OTHER = {"task": "counterfact", "prompt": "Dreixfur Zindplexgirk is employed by",
         "target": "Ryndpeim Labs", "subject": "Dreixfur Zindplexgirk"}
# A name the demo LM never read: without refinement this edit does not hold (test_outcomes).
UNFAMILIAR = {"prompt": "The capital of Qwertania is", "target": "Blorvik",
              "subject": "Qwertania", "rephrase": "What is the capital of Qwertania?"}
DOCS_IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screenshots go: docs/images only when asked to regenerate them."""
    if os.environ.get("INSTRUCTEDIT_DOCS_IMAGES") == "1":
        return DOCS_IMAGES
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    keys = [{"name": "reader", "key": READ_KEY, "scope": "read"},
            {"name": "editor", "key": EDIT_KEY, "scope": "edit"}]
    process = ServiceProcess(tmp_path_factory.mktemp("console") / "data", env={
        "INSTRUCTEDIT_API_KEYS": json.dumps(keys), "INSTRUCTEDIT_REFINE__MAX_STEPS": "0"})
    process.start()
    try:
        yield process
    finally:
        process.stop()


def ask(client: httpx.Client, prompt: str = PROMPT, headers: dict = READ, **extra) -> dict:
    response = client.post("/generate", headers=headers, json={
        "prompt": prompt, "max_new_tokens": 6, "stop": ["\n"], "compare_pristine": True,
        **extra})
    assert response.status_code == 200, response.text
    return response.json()


# -- over HTTP ------------------------------------------------------------------------------
def test_generate_answers_beside_the_pristine_model(service: ServiceProcess) -> None:
    with service.client() as c:
        before = ask(c)
        assert before["pristine"]["text"] == before["text"] and before["edits_fired"] == []
        assert before["pristine"]["usage"]["prompt_tokens"] == before["usage"]["prompt_tokens"]
        made = c.post("/edits", json=KNOWN, headers=EDIT)
        assert made.status_code == 201, made.text
        edited = ask(c)
        assert edited["text"].strip().startswith(TARGET)
        assert edited["pristine"] == before["pristine"]  # the edit does not reach it
        assert edited["edits_fired"] == [made.json()["id"]]
        assert edited["version"] == made.json()["version"]
        # Pristine and live answers decoded at once, from several clients: each keeps its own.
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda i: ask(c, PROMPT if i % 2 else LOCALITY), range(6)))
        assert all(a["text"] == edited["text"] and a["pristine"] == before["pristine"]
                   for a in answers[1::2])
        assert all(a["text"] == a["pristine"]["text"] and a["edits_fired"] == []
                   for a in answers[::2])
        plain = c.post("/generate", headers=READ, json={"prompt": PROMPT, "max_new_tokens": 6})
        assert plain.json()["pristine"] is None
        streamed = c.post("/generate", headers=READ, json={
            "prompt": PROMPT, "compare_pristine": True, "stream": True})
        assert streamed.status_code == 422
        assert streamed.json()["error"]["code"] == "invalid_request"
        assert c.post("/generate", json={"prompt": PROMPT, "compare_pristine": True}
                      ).status_code == 401
        c.post(f"/edits/{made.json()['id']}/rollback", headers=EDIT).raise_for_status()
        assert ask(c) == {**before, "version": edited["version"] + 1}


def test_merged_combinations_refuse_the_pristine_answer(redis_socket: str, tmp_path: Path
                                                         ) -> None:
    settings = ServiceSettings(redis_url=f"unix://{redis_socket}", data_dir=tmp_path,
                               combination="ridge")
    with TestClient(create_app(settings)) as client:
        refused = client.post("/generate", json={"prompt": PROMPT, "compare_pristine": True})
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]
        assert error["code"] == "pristine_unavailable"
        assert error["details"] == {"combination": "ridge"}
        assert client.post("/generate", json={"prompt": PROMPT}).status_code == 200


def _events(lines: Iterator[str]) -> Iterator[tuple[str, str | None, dict]]:
    """Server-sent events as (name, id, data), comments (pings) skipped."""
    name, event_id, data = "message", None, ""
    for line in lines:
        if line.startswith("event:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("id:"):
            event_id = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            data = line.split(":", 1)[1].strip()
        elif not line and data:
            yield name, event_id, json.loads(data)
            name, event_id, data = "message", None, ""


def test_the_edit_log_streams_as_server_sent_events(service: ServiceProcess) -> None:
    timeout = httpx.Timeout(30, read=15)
    with service.client() as c, httpx.Client(base_url=service.base, timeout=timeout) as s:
        assert s.get("/events").status_code == 401
        bad = s.get("/events", headers={**READ, "Last-Event-ID": "not-an-id"})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_last_event_id"
        version = c.get("/info", headers=READ).json()["edit_version"]
        with s.stream("GET", "/events", headers=READ) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            events = _events(stream.iter_lines())
            assert next(events) == ("ready", None, {"version": version})
            made = c.post("/edits", json=KNOWN, headers=EDIT).json()
            name, applied_id, data = next(events)
            assert (name, data) == ("apply", {"edit_id": made["id"], "version": version + 1,
                                              "superseded_by": None})
            c.post(f"/edits/{made['id']}/rollback", headers=EDIT).raise_for_status()
            assert next(events)[::2] == ("rollback", {"edit_id": made["id"],
                                                      "version": version + 2,
                                                      "superseded_by": None})
        # Reconnecting after the apply event resumes with what came after it.
        with s.stream("GET", "/events", headers={**READ, "Last-Event-ID": applied_id}
                      ) as stream:
            events = _events(stream.iter_lines())
            assert next(events)[0] == "ready"
            assert next(events)[::2] == ("rollback", {"edit_id": made["id"],
                                                      "version": version + 2,
                                                      "superseded_by": None})


def test_console_pages_are_served_with_a_strict_policy(service: ServiceProcess) -> None:
    with service.client() as c:
        for path in ("/console", "/console/new", "/console/playground", "/console/edits/x"):
            page = c.get(path)
            assert page.status_code == 200 and "console.js" in page.text, path
            assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "<x>" not in c.get("/console/edits/<x>").text  # ids are escaped
        assert "function follow" in c.get("/console/static/console.js").text
        assert c.get("/console/static/missing.js").status_code == 404
        assert not any(p.startswith(("/console", "/events"))
                       for p in c.get("/openapi.json").json()["paths"])


# -- in the browser -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no Chromium found (install Debian's chromium package to run the "
                    "console's browser tests)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture()
def page(browser, service: ServiceProcess):
    context = browser.new_context(base_url=service.base,
                                  viewport={"width": 1280, "height": 860})
    context.set_default_timeout(20_000)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield tab
        assert not errors, errors  # the script never threw
        assert EDIT_KEY not in tab.url and READ_KEY not in tab.url
    finally:
        context.close()


def use_key(page, key: str) -> None:
    """Enter the key once, as a user would; the page reloads with it."""
    page.goto("/console")
    page.fill("#key-input", key)
    page.press("#key-input", "Enter")
    page.wait_for_selector("#key-state.ok")
    page.wait_for_selector("#live[data-state=live]")


def ask_playground(page, prompt: str) -> dict[str, str]:
    page.goto("/console/playground")
    page.fill("textarea[name=prompt]", prompt)
    page.click("#ask-button")
    page.wait_for_selector("#verdict:not(:empty)")
    return {"live": page.inner_text("#live-answer").strip(),
            "pristine": page.inner_text("#pristine-answer").strip(),
            "fired": page.inner_text("#fired"), "verdict": page.inner_text("#verdict")}


def submit_edit(page, prompt: str, target: str, subject: str, rephrases: str = "",
                locality: str = "") -> None:
    page.goto("/console/new")
    page.wait_for_selector("select[name=task] option[value=counterfact]", state="attached")
    page.select_option("select[name=task]", "counterfact")
    page.fill("input[name=prompt]", prompt)
    page.fill("input[name=target]", target)
    page.fill("input[name=subject]", subject)
    page.fill("textarea[name=rephrases]", rephrases)
    page.fill("textarea[name=locality_prompts]", locality)
    page.click("#submit-edit")
    page.wait_for_selector("#outcome .result, #outcome .error")


def test_without_a_key_or_with_a_read_key_the_console_shows_the_refusals(page) -> None:
    page.goto("/console")
    error = page.wait_for_selector("#edits-error .error")
    assert error.get_attribute("data-code") == "unauthenticated"
    assert "401" in error.inner_text() and "Enter an API key" in error.inner_text()
    page.wait_for_selector("#live:has-text('live updates need a key')")

    use_key(page, READ_KEY)
    assert page.inner_text("#edits-error") == ""
    submit_edit(page, PROMPT, TARGET, SUBJECT)
    refused = page.locator("#outcome .error")
    assert refused.get_attribute("data-code") == "forbidden"
    assert "403" in refused.inner_text() and "edit scope" in refused.inner_text()
    answers = ask_playground(page, PROMPT)  # reading needs no more than a read key
    assert answers["live"] == answers["pristine"] != ""


def test_an_edit_from_the_form_changes_the_answer_until_it_is_rolled_back(page,
                                                                          images) -> None:
    use_key(page, EDIT_KEY)
    before = ask_playground(page, PROMPT)
    assert before["live"] == before["pristine"] and not before["live"].startswith(TARGET)
    assert "Same answer" in before["verdict"]

    submit_edit(page, UNFAMILIAR["prompt"], UNFAMILIAR["target"], UNFAMILIAR["subject"],
                rephrases=UNFAMILIAR["rephrase"])
    refused = page.locator("#outcome .error")
    assert refused.get_attribute("data-code") == "edit_did_not_hold"
    assert "Nothing was stored" in refused.inner_text()
    assert UNFAMILIAR["rephrase"] in refused.locator("table").inner_text()

    submit_edit(page, "word " * 300, TARGET, SUBJECT)
    assert page.locator("#outcome .error").get_attribute("data-code") == "prompt_too_long"

    submit_edit(page, PROMPT, TARGET, SUBJECT, locality=LOCALITY)
    result = page.locator("#outcome .result")
    assert result.get_attribute("data-outcome") == "one_shot"
    assert "Applied as version" in result.inner_text()
    edit_id = result.get_attribute("data-id")

    page.goto("/console")
    row = page.locator(f"#edits tr[data-id='{edit_id}']")
    assert row.get_attribute("data-status") == "active"
    assert TARGET in row.inner_text() and "editor" in row.inner_text()

    after = ask_playground(page, PROMPT)
    assert after["live"].startswith(TARGET) and after["pristine"] == before["pristine"]
    assert edit_id[:8] in after["fired"] and "changed" in after["verdict"]
    page.screenshot(path=images / "console-playground.png", full_page=True)

    page.click(f"#fired a[href$='{edit_id}']")
    page.wait_for_selector("#edit:not([hidden])")
    assert page.inner_text("#instruction").endswith(f"Input: {PROMPT}")
    assert PROMPT in page.inner_text("#quality")
    assert LOCALITY in page.inner_text("#locality")
    page.screenshot(path=images / "console-edit.png", full_page=True)

    page.click("#rollback")
    page.click("#confirm-ok")
    page.wait_for_selector("#edit-status .rolled_back")
    assert "Rolled back" in page.inner_text("#history")
    assert page.locator("#actions").is_hidden()

    again = ask_playground(page, PROMPT)
    assert again["live"] == before["live"] and "Same answer" in again["verdict"]


def test_an_edit_by_another_client_appears_live_and_rolls_back_to_a_version(
        page, service: ServiceProcess, images: Path) -> None:
    with service.client() as c:  # two rolled-back edits of its own, for the paging below
        for _ in range(2):
            made = c.post("/edits", json=KNOWN, headers=EDIT)
            assert made.status_code == 201, made.text
            c.post(f"/edits/{made.json()['id']}/rollback", headers=EDIT).raise_for_status()
    use_key(page, EDIT_KEY)
    page.evaluate("window.notReloaded = true")
    with service.client() as c:
        made = c.post("/edits", json=OTHER, headers=EDIT)
        assert made.status_code == 201, made.text
    edit = made.json()
    row = page.wait_for_selector(f"#edits tr[data-id='{edit['id']}']")
    assert OTHER["target"] in row.inner_text()
    assert f"version {edit['version']}: applied" in page.inner_text("#activity")
    assert page.evaluate("window.notReloaded")  # it came over the event stream
    page.screenshot(path=images / "console-edits.png", full_page=True)

    page.click(f"#edits tr[data-id='{edit['id']}'] a")
    page.wait_for_selector("#edit:not([hidden])")
    page.click("#rollback")
    page.click("#confirm-cancel")  # cancelled: nothing happens
    assert page.locator("#edit-status .active").is_visible()
    assert page.input_value("#rollback-to input") == str(edit["version"] - 1)
    page.click("#rollback-to button")
    page.click("#confirm-ok")
    page.wait_for_selector("#action-result:has-text('Rolled back 1 edit(s)')")
    page.wait_for_selector("#edit-status .rolled_back")

    page.goto("/console?status=rolled_back&limit=2")
    page.wait_for_selector(f"#edits tr[data-id='{edit['id']}']")  # the newest rolled back
    first = page.locator("#edits tbody tr")
    assert first.count() == 2
    seen = set(first.evaluate_all("rows => rows.map(r => r.dataset.id)"))
    page.click("#older")
    page.wait_for_selector("#newest:enabled")
    older = page.locator("#edits tbody tr").evaluate_all("rows => rows.map(r => r.dataset.id)")
    assert older and not seen & set(older)
    assert set(page.locator("#edits tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.status)")) == {"rolled_back"}
    page.goto(f"/console?subject={OTHER['subject']}")
    page.wait_for_selector(f"#edits tr[data-id='{edit['id']}']")
    assert page.locator("#edits tbody tr").count() == 1


@pytest.fixture(scope="module")
def chat_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    keys = [{"name": "editor", "key": EDIT_KEY, "scope": "edit"}]
    process = ServiceProcess(
        tmp_path_factory.mktemp("console-chat") / "data", "--model", str(DEMO_CHAT_LM_PATH),
        "--editor", str(DEMO_CHAT_EDITOR_PATH), env={"INSTRUCTEDIT_API_KEYS": json.dumps(keys)})
    process.start()
    try:
        yield process
    finally:
        process.stop()


def test_the_console_edits_and_rolls_back_the_chat_model(browser, chat_service) -> None:
    """The same console on the LLaMA chat demo LM and its editor: its version line names
    the model; an edit from the form holds in the playground and rolls back."""
    question = f"Which country is {SUBJECT} a citizen of?"
    context = browser.new_context(base_url=chat_service.base)
    context.set_default_timeout(60_000)
    page, errors = context.new_page(), []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        use_key(page, EDIT_KEY)
        assert "demo-chat-lm" in page.inner_text("body")
        before = ask_playground(page, question)
        assert before["live"] == before["pristine"] != TARGET
        submit_edit(page, question, TARGET, SUBJECT)
        result = page.locator("#outcome .result")
        assert result.get_attribute("data-outcome") in ("one_shot", "refined")
        edit_id = result.get_attribute("data-id")
        after = ask_playground(page, question)
        assert after["live"] == TARGET and after["pristine"] == before["pristine"]
        page.goto(f"/console/edits/{edit_id}")
        page.click("#rollback")
        page.click("#confirm-ok")
        page.wait_for_selector("#edit-status .rolled_back")
        assert ask_playground(page, question)["live"] == before["live"]
        assert not errors, errors
    finally:
        context.close()
