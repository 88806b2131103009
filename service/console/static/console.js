// The console's one script: fills the server-rendered page frames from the JSON API.
// Why a plain script and not htmx: see service/console/__init__.py. The API key lives in
// sessionStorage (this tab only), is sent as "Authorization: Bearer", never in a URL.
// Text from the API is set with textContent only, never parsed as HTML.
"use strict";

const BASE = document.body.dataset.base || "";
const KEY_ITEM = "instructedit.apiKey";

const apiKey = {
  get: () => sessionStorage.getItem(KEY_ITEM),
  set: (key) => sessionStorage.setItem(KEY_ITEM, key),
  clear: () => sessionStorage.removeItem(KEY_ITEM),
};

function authHeaders() {
  const key = apiKey.get();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

class ApiError extends Error {
  constructor(status, error) {
    super(error.message);
    this.status = status;
    this.code = error.code;
    this.details = error.details || {};
  }
}

async function api(method, path, body, headers = {}) {
  const init = { method, headers: { ...authHeaders(), ...headers } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(BASE + path, init);
  } catch (exc) {
    throw new ApiError(0, { code: "unreachable", message: `the service did not answer (${exc.message})` });
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!response.ok) {
    const error = data && data.error ? data.error
      : { code: `http_${response.status}`, message: text.slice(0, 300) || response.statusText };
    throw new ApiError(response.status, error);
  }
  return data;
}

// -- small DOM helpers ---------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const $ = (selector) => document.querySelector(selector);
const short = (id) => (id ? id.slice(0, 8) : "");
const pct = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)}%`);
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");
const lines = (text) => text.split("\n").map((s) => s.trim()).filter(Boolean);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function editLink(id, text) {
  return el("a", { href: `${BASE}/console/edits/${encodeURIComponent(id)}` }, text || short(id));
}

function badge(text, kind) {
  return el("span", { class: `badge ${kind || text || ""}` }, text || "–");
}

function show(container, ...nodes) {
  container.replaceChildren(...nodes);
}

function notice(text, kind = "info") {
  const item = el("p", { class: `notice ${kind}` }, text);
  $("#notices").prepend(item);
  setTimeout(() => item.remove(), 15000);
}

// -- errors, readably ----------------------------------------------------------------------
const HINTS = {
  401: "Enter an API key at the top of the page (it is kept in this tab only).",
  403: "This key may not do this: changes need a key with the edit scope.",
  429: "The service is busy; try again in a moment.",
  503: "The service is not ready (starting, or its edit store is away); try again shortly.",
};

function errorBox(error) {
  const status = error.status ? `${error.status} ` : "";
  const box = el("div", { class: "error", role: "alert", dataset: { code: error.code || "" } },
    el("p", {}, el("strong", {}, `${status}${error.code || "error"}`), " — ", error.message));
  const hint = HINTS[error.status];
  if (hint) box.append(el("p", { class: "hint" }, hint));
  const details = error.details || {};
  if (error.code === "edit_did_not_hold" && Array.isArray(details.edits)) {
    for (const edit of details.edits) {
      box.append(el("p", {}, `The model would not answer “${edit.target}” after `
        + `${edit.refine_steps} refinement steps (${edit.refine_ms} ms). Nothing was stored.`));
      box.append(el("table", { class: "grid" },
        el("thead", {}, el("tr", {}, el("th", {}, "Prompt"), el("th", {}, "Token accuracy before"),
          el("th", {}, "after"), el("th", {}, "P(target) before"), el("th", {}, "after"))),
        el("tbody", {}, edit.prompts.map((p) => el("tr", {}, el("td", {}, p.prompt),
          el("td", {}, pct(p.before.token_accuracy)), el("td", {}, pct(p.after.token_accuracy)),
          el("td", {}, pct(p.before.probability)), el("td", {}, pct(p.after.probability)))))));
    }
  } else if (Array.isArray(details.errors)) {
    box.append(el("ul", {}, details.errors.map((e) => el("li", {},
      el("code", {}, (e.loc || []).filter((part) => part !== "body").join(".") || "body"), ": ", e.msg))));
  } else if (Object.keys(details).length) {
    box.append(el("pre", {}, JSON.stringify(details, null, 2)));
  }
  return box;
}

function asApiError(exc) {
  return exc instanceof ApiError ? exc : new ApiError(0, { code: "console_error", message: String(exc) });
}

// -- the key and the live connection -------------------------------------------------------
async function describeKey() {
  const state = $("#key-state");
  try {
    const info = await api("GET", "/info");
    const who = apiKey.get() ? "key set" : "no key needed";
    const editor = info.trained_editor ? "" : " · no trained editor: edits are fitted";
    const model = info.model.split(/[\\/]/).filter(Boolean).pop();  // the folder's name
    state.textContent = `${who} · ${model} · version ${info.edit_version}, ` +
      `${info.active_edits} active${editor}`;
    state.className = "ok";
  } catch (exc) {
    const error = asApiError(exc);
    state.textContent = error.status === 401
      ? (apiKey.get() ? "this key is not valid" : "this service needs a key")
      : `${error.code}: ${error.message}`;
    state.className = "bad";
  }
}

function setupKey() {
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("#key-input").value.trim();
    if (!key) return;
    apiKey.set(key);
    location.reload();  // every view and the live connection start again with the key
  });
  $("#key-forget").addEventListener("click", () => {
    apiKey.clear();
    location.reload();
  });
  describeKey();
}

function setLive(state, text) {
  const live = $("#live");
  live.dataset.state = state;
  live.textContent = text;
}

// Reads GET /events with fetch (EventSource cannot send the key); reconnects with
// Last-Event-ID so that nothing is missed. onChange(name, data) gets apply/rollback events.
async function follow(onChange) {
  let last = null;
  for (;;) {
    const headers = authHeaders();
    if (last) headers["Last-Event-ID"] = last;
    try {
      setLive("connecting", "connecting…");
      const response = await fetch(`${BASE}/events`, { headers });
      if (response.status === 401 || response.status === 403) {
        setLive("off", "live updates need a key");
        return;
      }
      if (!response.ok) throw new Error(`status ${response.status}`);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.search(/\r\n\r\n|\n\n|\r\r/)) >= 0) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end).replace(/^(\r\n\r\n|\n\n|\r\r)/, "");
          const event = parseFrame(frame);
          if (event.id) last = event.id;
          if (event.event === "ready") {
            setLive("live", "live");
            await describeKey();
          } else if (event.event === "apply" || event.event === "rollback") {
            const data = JSON.parse(event.data);
            await onChange(event.event, data);
            describeKey();
          }
        }
      }
    } catch (exc) {
      setLive("off", "reconnecting");
    }
    await sleep(2000);
  }
}

function parseFrame(frame) {
  const event = { event: "message", data: "", id: null };
  const data = [];
  for (const line of frame.split(/\r\n|\n|\r/)) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event.event = value;
    else if (field === "data") data.push(value);
    else if (field === "id") event.id = value;
  }
  event.data = data.join("\n");
  return event;
}

function changeText(name, data) {
  const by = data.superseded_by ? ` (superseded by ${short(data.superseded_by)})` : "";
  return `version ${data.version}: ${name === "apply" ? "applied" : "rolled back"} edit ${short(data.edit_id)}${by}`;
}

async function loadTasks(select) {
  try {
    const tasks = await api("GET", "/tasks");
    for (const task of tasks) select.append(el("option", { value: task.name }, `${task.name} — ${task.title}`));
  } catch {
    // the page's own request shows why (no key, not ready)
  }
}

// -- the edits table -----------------------------------------------------------------------
function editsPage() {
  const form = $("#filters");
  const params = new URLSearchParams(location.search);
  for (const name of ["status", "task", "subject", "limit"]) {
    if (params.get(name)) form.elements[name].value = params.get(name);
  }
  const cursors = [];  // the `before` of each page shown so far (null: the newest)
  let next = null;
  const fresh = new Set();

  async function load(before) {
    const query = new URLSearchParams();
    for (const name of ["status", "task", "subject", "limit"]) {
      const value = form.elements[name].value.trim();
      if (value) query.set(name, value);
    }
    if (before) query.set("before", before);
    try {
      const page = await api("GET", `/edits?${query}`);
      show($("#edits-error"));
      const rows = page.edits.map((e) => el("tr", { dataset: { id: e.id, status: e.status }, class: fresh.has(e.id) ? "fresh" : null },
        el("td", {}, e.version), el("td", {}, badge(e.status.replace("_", " "), e.status)),
        el("td", {}, e.task), el("td", {}, e.subject || "–"), el("td", { class: "target" }, e.target),
        el("td", {}, badge(e.outcome || "not judged", e.outcome)), el("td", {}, when(e.created_at)),
        el("td", {}, e.created_by), el("td", {}, editLink(e.id))));
      $("#edits tbody").replaceChildren(...rows);
      $("#edits-empty").hidden = rows.length > 0;
      next = page.next_cursor;
      $("#older").disabled = next === null;
      $("#newest").disabled = cursors.length <= 1;
      $("#page-state").textContent = `page ${cursors.length}`;
    } catch (exc) {
      show($("#edits-error"), errorBox(asApiError(exc)));
      $("#edits tbody").replaceChildren();
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    for (const name of ["status", "task", "subject", "limit"]) {
      if (form.elements[name].value.trim()) query.set(name, form.elements[name].value.trim());
    }
    history.replaceState(null, "", `${location.pathname}${query.toString() ? "?" + query : ""}`);
    cursors.length = 0;
    cursors.push(null);
    load(null);
  });
  $("#older").addEventListener("click", () => { cursors.push(next); load(next); });
  $("#newest").addEventListener("click", () => { cursors.length = 1; load(null); });

  loadTasks(form.elements.task).then(() => {
    if (params.get("task")) form.elements.task.value = params.get("task");
  });
  cursors.push(null);
  load(null);
  follow(async (name, data) => {
    fresh.add(data.edit_id);
    $("#activity").prepend(el("li", {}, changeText(name, data), " ", editLink(data.edit_id, "open")));
    if (cursors.length === 1) await load(null);  // the newest page shows it at once
    else notice(`${changeText(name, data)} — go to the newest page to see it`);
  });
}

// -- one edit ------------------------------------------------------------------------------
function field(dl, name, value) {
  if (value === null || value === undefined || value === "" || (Array.isArray(value) && !value.length)) return;
  const shown = Array.isArray(value) ? el("ul", {}, value.map((v) => el("li", {}, v)))
    : typeof value === "object" ? el("pre", {}, JSON.stringify(value, null, 2)) : String(value);
  dl.append(el("dt", {}, name), el("dd", {}, shown));
}

function confirmDialog(text) {
  const dialog = $("#confirm");
  $("#confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

function editPage() {
  const id = document.body.dataset.editId;
  let edit = null;

  async function load() {
    try {
      edit = await api("GET", `/edits/${encodeURIComponent(id)}`);
    } catch (exc) {
      show($("#edit-error"), errorBox(asApiError(exc)));
      return;
    }
    show($("#edit-error"));
    $("#edit").hidden = false;
    show($("#edit-status"), badge(edit.status.replace("_", " "), edit.status));
    $("#actions").hidden = edit.status !== "active";
    $("#rollback-to").elements.to_version.value = Math.max(edit.version - 1, 0);

    const request = $("#request");
    request.replaceChildren();
    field(request, "Version", edit.version);
    field(request, "Task", edit.task);
    field(request, "Prompt", edit.prompt);
    field(request, "Target", edit.target);
    field(request, "Subject", edit.subject);
    field(request, "Relation", edit.relation);
    field(request, "Aliases", edit.aliases);
    field(request, "Rephrases", edit.rephrases);
    field(request, "Locality prompts", edit.locality_prompts);
    field(request, "Description", edit.description);
    field(request, "Sentiment", edit.sentiment);
    field(request, "Metadata", Object.keys(edit.metadata || {}).length ? edit.metadata : null);
    field(request, "Accept partial", edit.accept_partial ? "yes" : null);
    field(request, "Outcome", `${edit.outcome || "not judged"}${edit.refine_steps ? ` after ${edit.refine_steps} refinement steps` : ""}`);
    field(request, "Created", `${when(edit.created_at)} by ${edit.created_by}`);
    $("#instruction").textContent = edit.instruction;

    const quality = edit.quality;
    const rows = [];
    if (quality) {
      const row = (prompt, q, kind) => el("tr", { class: kind },
        el("td", {}, prompt), el("td", {}, pct(q.before.probability)), el("td", {}, pct(q.after.probability)),
        el("td", {}, pct(q.before.token_accuracy)), el("td", {}, pct(q.after.token_accuracy)));
      rows.push(row(edit.prompt, quality.prompt, "main"));
      for (const r of quality.rephrases) rows.push(row(r.prompt, r, "rephrase"));
      for (const e of quality.earlier_edits || []) rows.push(row(`earlier edit ${short(e.id)}: ${e.prompt} → ${e.target}`, e, "earlier"));
    }
    $("#quality tbody").replaceChildren(...rows);
    const locality = quality ? quality.locality : [];
    $("#locality tbody").replaceChildren(...locality.map((l) => el("tr", { class: l.unchanged ? "same" : "changed" },
      el("td", {}, l.prompt), el("td", {}, l.before), el("td", {}, l.after), el("td", {}, l.unchanged ? "yes" : "no"))));
    $("#locality-none").hidden = locality.length > 0;

    const history = $("#history");
    history.replaceChildren();
    field(history, "Superseded", edit.superseded.length ? el("span", {}, edit.superseded.map((s) => [editLink(s), " "])) : "nothing");
    if (edit.superseded_by) field(history, "Superseded by", editLink(edit.superseded_by));
    if (edit.status === "rolled_back") {
      field(history, "Rolled back", `${when(edit.rolled_back_at)} by ${edit.rolled_back_by}, as version ${edit.rolled_back_version}`);
    }
    if (edit.timings_ms) {
      field(history, "Timings", Object.entries(edit.timings_ms).map(([k, v]) => `${k} ${v.toFixed(1)} ms`).join(" · "));
    }
  }

  $("#rollback").addEventListener("click", async () => {
    if (!await confirmDialog(`Roll back edit ${short(id)} (version ${edit.version})? The live model stops answering “${edit.target}” for “${edit.prompt}”, exactly as if the edit had never been made. The record stays.`)) return;
    try {
      const done = await api("POST", `/edits/${encodeURIComponent(id)}/rollback`);
      show($("#action-result"), el("p", { class: "notice ok" }, `Rolled back as version ${done.rolled_back_version}.`));
    } catch (exc) {
      show($("#action-result"), errorBox(asApiError(exc)));
    }
    await load();
  });

  $("#rollback-to").addEventListener("submit", async (event) => {
    event.preventDefault();
    const version = Number(event.target.elements.to_version.value);
    if (!await confirmDialog(`Roll back every active edit newer than version ${version}, this one included if it is newer? Each is removed exactly; the records stay.`)) return;
    try {
      const done = await api("POST", "/edits/rollback", { to_version: version });
      show($("#action-result"), el("p", { class: "notice ok" },
        `Rolled back ${done.rolled_back.length} edit(s); the live weights are at version ${done.version}.`));
    } catch (exc) {
      show($("#action-result"), errorBox(asApiError(exc)));
    }
    await load();
  });

  load();
  follow(async (name, data) => {
    if (data.edit_id === id || data.superseded_by === id) {
      notice(changeText(name, data));
      await load();
    }
  });
}

// -- a new edit ----------------------------------------------------------------------------
function randomKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function editBody(form) {
  const f = form.elements;
  const body = { task: f.task.value, prompt: f.prompt.value.trim(), target: f.target.value.trim() };
  for (const name of ["subject", "relation", "description", "sentiment"]) {
    if (f[name].value.trim()) body[name] = f[name].value.trim();
  }
  for (const name of ["aliases", "rephrases", "locality_prompts"]) {
    const values = lines(f[name].value);
    if (values.length) body[name] = values;
  }
  if (f.metadata.value.trim()) {
    try {
      body.metadata = JSON.parse(f.metadata.value);
    } catch (exc) {
      throw new ApiError(0, { code: "invalid_metadata", message: `metadata is not JSON: ${exc.message}` });
    }
  }
  if (f.accept_partial.checked) body.accept_partial = true;
  return body;
}

function outcomeCard(edit) {
  const q = edit.quality;
  return el("div", { class: "result ok", dataset: { id: edit.id, outcome: edit.outcome || "" } },
    el("p", {}, el("strong", {}, `Applied as version ${edit.version}`), " — outcome ",
      badge(edit.outcome || "not judged", edit.outcome),
      edit.refine_steps ? ` after ${edit.refine_steps} refinement steps` : ""),
    q ? el("p", {}, `P(“${edit.target}”) on the prompt: ${pct(q.prompt.before.probability)} → ${pct(q.prompt.after.probability)}; `
      + `token accuracy ${pct(q.prompt.before.token_accuracy)} → ${pct(q.prompt.after.token_accuracy)}`
      + (q.locality_unchanged === null ? "" : `; locality answers ${q.locality_unchanged ? "unchanged" : "CHANGED"}`)) : null,
    edit.superseded.length ? el("p", {}, "Superseded: ", edit.superseded.map((s) => [editLink(s), " "])) : null,
    el("p", {}, editLink(edit.id, "Open the edit"), " · ",
      el("a", { href: `${BASE}/console/playground?prompt=${encodeURIComponent(edit.prompt)}` }, "Ask the playground")));
}

function newEditPage() {
  const form = $("#new-edit");
  loadTasks(form.elements.task).then(() => {
    if (!form.elements.task.options.length) {
      show($("#outcome"), errorBox(new ApiError(0, { code: "no_tasks", message: "the task list could not be read (is a key needed?)" })));
    }
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = $("#submit-edit");
    button.disabled = true;
    show($("#outcome"), el("p", { class: "muted" }, "Editing…"));
    try {
      const edit = await api("POST", "/edits", editBody(form), { "Idempotency-Key": randomKey() });
      show($("#outcome"), outcomeCard(edit));
    } catch (exc) {
      show($("#outcome"), errorBox(asApiError(exc)));
    } finally {
      button.disabled = false;
    }
  });
  follow(async (name, data) => notice(changeText(name, data)));
}

// -- the playground ------------------------------------------------------------------------
function playgroundPage() {
  const form = $("#ask");
  const asked = new URLSearchParams(location.search).get("prompt");
  if (asked) form.elements.prompt.value = asked;
  let last = null;

  async function ask(request) {
    last = request;
    $("#ask-button").disabled = true;
    show($("#ask-error"));
    try {
      let answer;
      let pristineError = null;
      try {
        answer = await api("POST", "/generate", { ...request, compare_pristine: true });
      } catch (exc) {
        if (!(exc instanceof ApiError) || exc.code !== "pristine_unavailable") throw exc;
        pristineError = exc;
        answer = await api("POST", "/generate", request);
      }
      $("#live-answer").textContent = answer.text;
      $("#live-version").textContent = `(version ${answer.version})`;
      if (pristineError) {
        show($("#pristine-answer"), errorBox(pristineError));
        $("#verdict").textContent = "";
      } else {
        $("#pristine-answer").textContent = answer.pristine.text;
        const same = answer.pristine.text === answer.text;
        $("#verdict").textContent = same ? "Same answer as the pristine model." : "The edits changed this answer.";
        $("#verdict").dataset.same = same;
      }
      await showFired(answer.edits_fired);
    } catch (exc) {
      show($("#ask-error"), errorBox(asApiError(exc)));
    } finally {
      $("#ask-button").disabled = false;
    }
  }

  async function showFired(ids) {
    $("#fired-none").hidden = ids.length > 0;
    const items = await Promise.all(ids.map(async (id) => {
      try {
        const e = await api("GET", `/edits/${encodeURIComponent(id)}`);
        return el("li", { dataset: { id } }, editLink(id), ` ${e.subject ? e.subject + ": " : ""}“${e.prompt}” → “${e.target}” (version ${e.version}, ${e.task})`);
      } catch {
        return el("li", { dataset: { id } }, editLink(id));
      }
    }));
    $("#fired").replaceChildren(...items);
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const f = form.elements;
    ask({
      prompt: f.prompt.value,
      max_new_tokens: Number(f.max_new_tokens.value) || 16,
      stop: f.stop_at_newline.checked ? ["\n"] : [],
    });
  });
  follow(async (name, data) => {
    if (!last) return;
    notice(`${changeText(name, data)} — asked again`);
    await ask(last);
  });
}

const PAGES = { edits: editsPage, edit: editPage, new: newEditPage, playground: playgroundPage };

setupKey();
PAGES[document.body.dataset.page]();
