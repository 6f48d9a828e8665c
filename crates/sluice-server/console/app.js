// Sluice's web console: a single page over the management API (/v1), with no build step
// and nothing fetched from the network (everything is served by the binary).
//
// Invariants:
// - Every call goes through api(), which sends the signed-in token and turns every error
//   into words (the API's own message), never a bare status code.
// - What the signed-in token's scope cannot do is not rendered (not merely disabled).
// - Live data arrives over one EventSource per page, closed when the page changes.
// - Text from the API is put in the page as text (textContent), never as HTML.

const state = { token: sessionStorage.getItem("sluice.token"), me: null, live: null, poll: null };

// ---------------------------------------------------------------------------------
// The API

class ApiError extends Error {
  constructor(status, body) {
    super(body?.error || `The server answered ${status} without an explanation.`);
    this.status = status;
    this.body = body || {};
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${state.token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, { error: "The server cannot be reached. Is it running, and is this address on its allow-list?" });
  }
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = { error: text.trim() }; }
  if (!res.ok) throw new ApiError(res.status, json);
  return json;
}

const can = {
  read: () => state.me && ["admin", "read"].includes(state.me.scope.kind),
  admin: () => state.me && state.me.scope.kind === "admin",
};

// ---------------------------------------------------------------------------------
// Small DOM helpers

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  let v = Number(n);
  while (Math.abs(v) >= 1000 && i < units.length - 1) { v /= 1000; i++; }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function rate(n) {
  return `${Number(n || 0).toLocaleString(undefined, { maximumFractionDigits: 1 })}/s`;
}

function toast(message) {
  const t = document.getElementById("toast");
  t.textContent = message;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.textContent = ""; }, 6000);
}

function errorBox(e) {
  const box = el("div", { class: "error", role: "alert" }, el("p", { text: e.message }));
  for (const p of e.body?.problems || []) box.append(el("p", { text: p }));
  for (const f of (e.body?.findings || []).filter((f) => !f.ok)) {
    box.append(el("p", {}, el("strong", { text: f.what }), f.fix ? el("span", { text: ` — fix: ${f.fix}` }) : null));
  }
  return box;
}

function render(...nodes) {
  const main = document.getElementById("main");
  main.replaceChildren(...nodes);
}

function stopLive() {
  if (state.live) { state.live.close(); state.live = null; }
  if (state.poll) { clearInterval(state.poll); state.poll = null; }
}

/// An EventSource on a management stream; `on` gets each event's JSON.
function live(path, event, on) {
  stopLive();
  const src = new EventSource(`${path}?access_token=${encodeURIComponent(state.token)}`);
  src.addEventListener(event, (m) => on(JSON.parse(m.data)));
  src.onerror = () => toast("The live view lost the server; it reconnects by itself.");
  state.live = src;
}

// ---------------------------------------------------------------------------------
// Sign-in

function signinView(message) {
  document.getElementById("nav").hidden = true;
  const input = el("input", { id: "token", name: "token", type: "password", autocomplete: "off", required: true, "aria-describedby": "token-help" });
  const err = el("p", { id: "token-error", class: "field-error", role: "alert" });
  const form = el("form", { class: "card narrow", onsubmit: async (ev) => {
    ev.preventDefault();
    state.token = input.value.trim();
    try {
      state.me = await api("GET", "/v1/whoami");
    } catch (e) {
      err.textContent = e.status === 401 ? "This token is not valid: check it, or ask an admin for a new one." : e.message;
      input.setAttribute("aria-invalid", "true");
      return;
    }
    if (!can.read()) {
      err.textContent = "This token only consumes one sink; the console needs an admin or read-only token.";
      return;
    }
    sessionStorage.setItem("sluice.token", state.token);
    location.hash = "#/";
    route();
  } },
  el("h1", { text: "Sign in" }),
  el("label", { for: "token", text: "Token" }),
  input,
  el("p", { id: "token-help", class: "muted", text: "The admin token `sluice server` printed at its first start, or a token made under Settings." }),
  err,
  el("button", { type: "submit", text: "Sign in" }));
  render(message ? el("p", { class: "notice", text: message }) : "", form);
  input.focus();
}

// ---------------------------------------------------------------------------------
// Pipelines

function stateBadge(p) {
  const words = { running: "running", paused: "paused", failed: "failed", refused: "refused", stopped: "stopped" };
  if (p.state === "running" && !p.status) return el("span", { class: "badge paused", text: "starting" });
  const streaming = p.state === "running" && !p.status.streaming ? " (source not streaming)" : "";
  return el("span", { class: `badge ${p.state}`, text: `${words[p.state] || p.state}${streaming}` });
}

function listView() {
  const body = el("tbody");
  const table = el("table", { class: "grid" },
    el("caption", { class: "sr-only", text: "Pipelines, updated live" }),
    el("thead", {}, el("tr", {}, ["Pipeline", "State", "Slot lag", "Throughput", "Sinks (records behind)"].map((h) => el("th", { scope: "col", text: h })))),
    body);
  const empty = el("p", { class: "muted", hidden: true, text: "No pipelines yet." });
  render(
    el("div", { class: "heading" }, el("h1", { text: "Pipelines" }),
      can.admin() ? el("a", { class: "button", href: "#/new", text: "New pipeline" }) : null),
    el("div", { class: "scroll", "aria-live": "polite" }, table), empty);
  const fill = (list) => {
    empty.hidden = list.pipelines.length > 0;
    body.replaceChildren(...list.pipelines.map((p) => {
      const s = p.status;
      const total = s ? s.sinks.reduce((a, k) => a + k.per_second, 0) : 0;
      return el("tr", { "data-pipeline": p.name },
        el("th", { scope: "row" }, el("a", { href: `#/pipelines/${encodeURIComponent(p.name)}`, text: p.name })),
        el("td", {}, stateBadge(p)),
        el("td", { text: s ? bytes(s.slot_lag_bytes) : "–" }),
        el("td", { class: "throughput", text: s ? rate(total) : "–" }),
        el("td", {}, s ? s.sinks.map((k) => el("span", { class: "chip", text: `${k.name}: ${k.lag_records}` })) : p.sinks.map((k) => el("span", { class: "chip", text: k.name }))));
    }));
  };
  api("GET", "/v1/pipelines").then(fill, (e) => render(errorBox(e)));
  live("/v1/stream/pipelines", "pipelines", fill);
}

function pipelineView(name) {
  const head = el("div", { class: "heading" });
  const facts = el("dl", { class: "facts" });
  const copies = el("section", { "aria-labelledby": "copies-h" });
  const sinks = el("tbody");
  const actions = el("div", { class: "actions" });
  const adder = el("div", { "aria-live": "polite" });
  const errors = el("div");
  const chartBox = el("div", { class: "charts" });
  render(head, errors, facts, copies,
    el("section", { "aria-labelledby": "charts-h" }, el("h2", { id: "charts-h", text: "Lag and throughput, last hour" }), chartBox),
    el("section", { "aria-labelledby": "sinks-h" }, el("h2", { id: "sinks-h", text: "Sinks" }),
      el("div", { class: "scroll" }, el("table", { class: "grid" },
        el("thead", {}, el("tr", {}, ["Sink", "Type", "Records behind", "Throughput", "Delivered", "Failures"].map((h) => el("th", { scope: "col", text: h })))),
        sinks))),
    actions, adder);
  const charts = sinkCharts(chartBox);
  api("GET", `/v1/pipelines/${encodeURIComponent(name)}/history`).then((h) => charts.history(h), () => {});
  const fill = (p) => {
    const s = p.status;
    charts.live(s);
    head.replaceChildren(el("h1", { text: p.name }), stateBadge(p));
    errors.replaceChildren(
      p.error ? el("div", { class: "error", role: "alert" }, el("p", { text: p.error })) : "",
      s?.last_error ? el("p", { class: "notice", text: `Last source error: ${s.last_error}` }) : "",
      (p.findings || []).length ? errorBox({ message: "The checks failed at start:", body: { findings: p.findings } }) : "");
    const budget = p.config?.log?.max_bytes;
    const rows = [
      ["Tables", p.tables.join(", ")],
      ["Slot", `${p.slot}${s?.slot_active === false ? " (inactive)" : ""}`],
      ["Slot WAL status", s?.slot_wal_status || "–"],
      ["WAL retained by the slot", bytes(s?.slot_retained_bytes)],
      ["Slot lag", bytes(s?.slot_lag_bytes)],
      ["Log on disk", budget ? `${bytes(s?.log_bytes)} of ${bytes(budget)}` : bytes(s?.log_bytes)],
      ["Source reconnects", s ? String(s.reconnects) : "–"],
      ["Heartbeat", s?.heartbeat_age_secs !== undefined ? `${s.heartbeat_age_secs.toFixed(1)} s ago` : "off"],
      ["Publication", p.publication],
    ];
    facts.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
    const cs = s?.copies || [];
    copies.replaceChildren(...(cs.length ? [el("h2", { id: "copies-h", text: "Snapshot and backfills" }),
      ...cs.map((c) => {
        const max = Math.max(c.estimated_rows, c.rows, 1);
        const id = `copy-${c.table}`;
        return el("div", { class: "copy" },
          el("label", { for: id, text: `${c.table} (${c.kind}): ${c.rows.toLocaleString()} rows${c.finished ? ", done" : ""}` }),
          el("progress", { id, max, value: c.finished ? max : c.rows }));
      })] : []));
    const byName = new Map((s?.sinks || []).map((k) => [k.name, k]));
    sinks.replaceChildren(...p.sinks.map((k) => {
      const st = byName.get(k.name);
      const waiting = k.type === "webhook" || k.type === "pull";
      return el("tr", {}, el("th", { scope: "row" }, waiting
        ? el("a", { href: `#/pipelines/${encodeURIComponent(p.name)}/sinks/${encodeURIComponent(k.name)}`, text: k.name, title: "Its waiting room and dead letters" })
        : k.name), el("td", { text: k.type }),
        el("td", { text: st ? String(st.lag_records) : "–" }), el("td", { text: st ? rate(st.per_second) : "–" }),
        el("td", { text: st ? String(st.delivered) : "–" }), el("td", { text: st ? String(st.failures) : "–" }));
    }));
    if (can.admin() && p.origin.kind === "api") {
      actions.replaceChildren(
        p.state === "paused"
          ? el("button", { type: "button", text: "Resume", onclick: () => act("POST", `/v1/pipelines/${p.name}/resume`, "Resumed.") })
          : el("button", { type: "button", text: "Pause", onclick: () => act("POST", `/v1/pipelines/${p.name}/pause`, "Paused: the slot keeps the changes meanwhile.") }),
        el("button", { type: "button", text: "Add tables…", onclick: () => addTables(p, adder) }),
        el("button", { type: "button", class: "danger", text: "Delete…", onclick: () => confirmDelete(p) }));
    } else if (can.admin()) {
      actions.replaceChildren(el("p", { class: "muted", text: `This pipeline comes from ${p.origin.path}: change it there.` }));
    } else {
      actions.replaceChildren();
    }
  };
  const act = async (method, path, done) => {
    try { fill(await api(method, path)); toast(done); } catch (e) { errors.replaceChildren(errorBox(e)); }
  };
  const load = () => api("GET", `/v1/pipelines/${encodeURIComponent(name)}`).then(fill, (e) => render(errorBox(e)));
  load();
  live(`/v1/stream/pipelines/${encodeURIComponent(name)}`, "pipeline", fill);
}

/// Tables of the source not captured yet, to add (each is backfilled while the others
/// stream).
async function addTables(p, box) {
  box.replaceChildren(el("p", { class: "muted", text: "Looking at the source's tables…" }));
  let found;
  try { found = await api("GET", `/v1/pipelines/${encodeURIComponent(p.name)}/tables`); } catch (e) { box.replaceChildren(errorBox(e)); return; }
  const redis = p.sinks.some((k) => k.type === "redis");
  const fresh = found.tables.filter((t) => !p.tables.includes(`${t.schema}.${t.table}`));
  if (!fresh.length) { box.replaceChildren(el("p", { text: "Every table of the source is captured already." })); return; }
  const items = fresh.map((t) => {
    const name = `${t.schema}.${t.table}`;
    const why = !t.readable ? "the role may not read it" : (redis && !t.primary_key ? "no primary key: a Redis sink keys rows by it" : null);
    return el("li", {}, el("input", { type: "checkbox", id: `add-${name}`, value: name, disabled: !!why }),
      el("label", { for: `add-${name}`, text: ` ${name}` }), why ? el("span", { class: "muted", text: ` (not selectable: ${why})` }) : null);
  });
  const out = el("div");
  box.replaceChildren(el("div", { class: "card inline" }, el("h2", { text: "Add tables" }), el("ul", { class: "plain" }, items),
    el("button", { type: "button", text: "Add and backfill", onclick: async () => {
      const picked = [...box.querySelectorAll("input:checked")].map((i) => i.value);
      if (!picked.length) { out.replaceChildren(el("p", { class: "field-error", text: "Choose at least one table." })); return; }
      const config = JSON.parse(JSON.stringify(p.config));
      config.source.tables = [...config.source.tables, ...picked];
      try {
        await api("PUT", `/v1/pipelines/${encodeURIComponent(p.name)}`, config);
        box.replaceChildren();
        toast(`Added ${picked.join(", ")}: backfilling while the others stream.`);
      } catch (e) { out.replaceChildren(errorBox(e)); }
    } }), out));
}

/// One chart per sink: records behind and records per second over the last hour, from
/// the server's history, then extended by each live update.
function sinkCharts(box) {
  const charts = new Map();
  const css = getComputedStyle(document.documentElement);
  const color = (v) => css.getPropertyValue(v).trim();
  const HOUR = 3600;
  const make = (name) => {
    const caption = el("figcaption", { class: "muted" });
    const area = el("div", { class: "chart-area" });
    const fig = el("figure", { class: "chart", "aria-label": `Lag and throughput of sink ${name} over the last hour` }, el("h3", { text: name }), area, caption);
    box.append(fig);
    const data = [[], [], []];
    const plot = new uPlot({
      width: Math.max(280, Math.min(box.clientWidth || 600, 1100)),
      height: 200,
      series: [{}, { label: "records behind", stroke: color("--accent"), scale: "lag", width: 2 },
        { label: "records/s", stroke: color("--ok"), scale: "rate", width: 2 }],
      axes: [{ stroke: color("--muted") }, { scale: "lag", stroke: color("--muted") },
        { scale: "rate", side: 1, stroke: color("--muted"), grid: { show: false } }],
    }, data, area);
    const c = { plot, data, caption };
    charts.set(name, c);
    return c;
  };
  const add = (name, t, lag, rate) => {
    const c = charts.get(name) || make(name);
    const [xs, ls, rs] = c.data;
    if (xs.length && t <= xs[xs.length - 1]) return;
    xs.push(t); ls.push(lag); rs.push(rate);
    while (xs.length && xs[0] < t - HOUR) { xs.shift(); ls.shift(); rs.shift(); }
    c.plot.setData(c.data);
    c.caption.textContent = `Now: ${lag} records behind, ${rate.toFixed(1)} records/s.`;
  };
  return {
    history(h) { for (const s of h.samples) for (const [name, [lag, rate]] of Object.entries(s.sinks)) add(name, s.time_ms / 1000, lag, rate); },
    live(status) { const t = Date.now() / 1000; for (const k of status?.sinks || []) add(k.name, t, k.lag_records, k.per_second); },
  };
}

function confirmDelete(p) {
  const keep = el("input", { type: "checkbox", id: "keep-slot" });
  const dialog = el("dialog", { "aria-labelledby": "del-h" },
    el("h2", { id: "del-h", text: `Delete ${p.name}?` }),
    el("p", { text: `This stops the pipeline, drops replication slot ${p.slot} and publication ${p.publication}, and removes its local data and consume tokens.` }),
    el("p", {}, keep, el("label", { for: "keep-slot", text: " Keep the slot and publication (changes keep accumulating in the database)" })),
    el("div", { class: "actions" },
      el("button", { type: "button", text: "Cancel", onclick: () => dialog.close() }),
      el("button", { type: "button", class: "danger", text: "Delete", onclick: async () => {
        try {
          await api("DELETE", `/v1/pipelines/${encodeURIComponent(p.name)}${keep.checked ? "?keep_slot=true" : ""}`);
          dialog.close();
          toast(`Deleted ${p.name}.`);
          location.hash = "#/";
        } catch (e) { dialog.append(errorBox(e)); }
      } })));
  document.body.append(dialog);
  dialog.addEventListener("close", () => dialog.remove());
  dialog.showModal();
}

// ---------------------------------------------------------------------------------
// New pipeline: source, tables and columns, sinks, name, review

function field(id, label, attrs = {}, help) {
  const input = el("input", { id, name: id, autocomplete: "off", ...attrs, "aria-describedby": `${id}-error${help ? ` ${id}-help` : ""}` });
  return {
    input,
    error: el("p", { id: `${id}-error`, class: "field-error", role: "alert" }),
    node: null,
    wrap() {
      this.node = el("div", { class: "field" }, el("label", { for: id, text: label }), input,
        help ? el("p", { id: `${id}-help`, class: "muted", text: help }) : null, this.error);
      return this.node;
    },
    fail(text) { this.error.textContent = text; input.setAttribute("aria-invalid", "true"); },
    clear() { this.error.textContent = ""; input.removeAttribute("aria-invalid"); },
  };
}

/// The failed findings of a check, in words with their fixes.
function findingsList(findings) {
  const failed = findings.filter((f) => !f.ok);
  if (!failed.length) return el("p", { class: "ok-text", text: "Every check passed." });
  return el("ul", { class: "findings" }, failed.map((f) =>
    el("li", {}, el("span", { text: f.what }), f.fix ? el("span", { class: "fix", text: ` Fix: ${f.fix}` }) : null)));
}

function wizardView() {
  const w = { url: null, database: null, tables: [], sinks: [] };
  const host = field("src-host", "Host", { value: "127.0.0.1", required: true });
  const port = field("src-port", "Port", { value: "5432", inputmode: "numeric", required: true });
  const db = field("src-db", "Database", { required: true });
  const user = field("src-user", "User", { required: true });
  const pass = field("src-password", "Password", { type: "password" });
  const srcResult = el("div", { "aria-live": "polite" });
  const tablesBox = el("div");
  const sinksBox = el("div");
  const sinkList = el("ul", { class: "plain" });
  const nameF = field("pipeline-name", "Pipeline name", { pattern: "[a-z0-9_]{1,50}", required: true },
    "1-50 characters of a-z, 0-9 and _; it names the slot and publication (sluice_<name>).");
  const review = el("div", { "aria-live": "polite" });
  const authWords = /password|authentication/i;

  const url = () => {
    const u = encodeURIComponent(user.input.value.trim());
    const p = pass.input.value ? `:${encodeURIComponent(pass.input.value)}` : "";
    return `postgres://${u}${p}@${host.input.value.trim()}:${port.input.value.trim()}/${encodeURIComponent(db.input.value.trim())}`;
  };

  const testSource = async (ev) => {
    ev.preventDefault();
    for (const f of [host, port, db, user, pass]) f.clear();
    srcResult.replaceChildren(el("p", { class: "muted", text: "Checking the source…" }));
    let res;
    try { res = await api("POST", "/v1/sources/test", { url: url() }); } catch (e) { srcResult.replaceChildren(errorBox(e)); return; }
    const failed = res.findings.filter((f) => !f.ok);
    const auth = failed.find((f) => authWords.test(f.what));
    if (auth) pass.fail("PostgreSQL refused this user and password. Fix: check both (the full message is below).");
    srcResult.replaceChildren(findingsList(res.findings));
    if (failed.some((f) => f.blocking)) return;
    w.url = url();
    w.database = db.input.value.trim();
    try {
      const d = await api("POST", "/v1/sources/discover", { url: w.url });
      w.tables = d.tables;
      drawTables();
    } catch (e) { tablesBox.replaceChildren(errorBox(e)); }
  };

  const hasRedis = () => w.sinks.some((k) => k.type === "redis");
  const drawTables = () => {
    const rows = w.tables.map((t) => {
      const id = `t-${t.schema}.${t.table}`;
      const blocked = !t.readable ? "the role may not read it: GRANT SELECT on it" : (hasRedis() && !t.primary_key ? "no primary key: a Redis sink keys rows by it" : null);
      if (blocked) t.chosen = false;
      const box = el("input", { type: "checkbox", id, disabled: !!blocked, checked: !!t.chosen, "aria-describedby": blocked ? `${id}-why` : null,
        onchange: (e) => { t.chosen = e.target.checked; } });
      const cols = el("details", {}, el("summary", { text: `Columns (${t.columns.length})` }),
        el("ul", { class: "plain" }, t.columns.map((c) => {
          const cid = `${id}.${c.name}`;
          if (c.chosen === undefined) c.chosen = true;
          return el("li", {}, el("input", { type: "checkbox", id: cid, checked: c.chosen, onchange: (e) => { c.chosen = e.target.checked; } }),
            el("label", { for: cid, text: ` ${c.name} (${c.type})` }));
        })));
      return el("li", { class: "table-choice" }, box, el("label", { for: id, text: ` ${t.schema}.${t.table}` }),
        el("span", { class: "muted", text: ` ~${Math.max(t.estimated_rows, 0).toLocaleString()} rows${t.primary_key ? "" : ", no primary key"}` }),
        blocked ? el("p", { id: `${id}-why`, class: "muted", text: `Not selectable: ${blocked}.` }) : null, cols);
    });
    tablesBox.replaceChildren(el("h2", { id: "tables-h", text: "2. Tables and columns" }),
      rows.length ? el("ul", { class: "plain", "aria-labelledby": "tables-h" }, rows) : el("p", { text: "The source has no tables this role can see." }));
    drawSinks();
  };

  const chosenTables = () => w.tables.filter((t) => t.chosen).map((t) => `${t.schema}.${t.table}`);

  const drawSinks = () => {
    const type = el("select", { id: "sink-type" }, ["redis", "webhook", "sse", "pull", "file"].map((t) => el("option", { value: t, text: t })));
    const name = field("sink-name", "Sink name", { value: w.sinks.length ? "" : "cache", required: true });
    const target = field("sink-url", "Redis URL", { value: "redis://127.0.0.1:6379" });
    const secret = field("sink-secret", "Webhook secret", { type: "password" });
    const result = el("div", { "aria-live": "polite" });
    const extra = el("div");
    const redraw = () => {
      const t = type.value;
      target.node.querySelector("label").textContent = { redis: "Redis URL", webhook: "Webhook URL", file: "File path" }[t] || "";
      target.node.hidden = !["redis", "webhook", "file"].includes(t);
      secret.node.hidden = t !== "webhook";
    };
    const spec = () => {
      const t = type.value;
      const k = { name: name.input.value.trim(), type: t };
      if (t === "redis" || t === "webhook") k.url = target.input.value.trim();
      if (t === "file") k.path = target.input.value.trim();
      if (t === "webhook" && secret.input.value) k.secret = secret.input.value;
      return k;
    };
    const verify = async () => {
      result.replaceChildren(el("p", { class: "muted", text: "Verifying…" }));
      try {
        const r = await api("POST", "/v1/sinks/verify", { sink: spec(), tables: chosenTables(), database: w.database });
        result.replaceChildren(findingsList(r.findings));
        return r.ok;
      } catch (e) { result.replaceChildren(errorBox(e)); return false; }
    };
    extra.append(name.wrap(), el("label", { for: "sink-type", text: "Type" }), type, target.wrap(), secret.wrap());
    type.addEventListener("change", redraw);
    sinksBox.replaceChildren(el("h2", { text: "3. Sinks" }), sinkList,
      el("div", { class: "card inline" }, extra,
        el("div", { class: "actions" },
          el("button", { type: "button", text: "Verify", onclick: verify }),
          el("button", { type: "button", text: "Add sink", onclick: async () => {
            if (!(await verify())) return;
            w.sinks.push(spec());
            sinkList.replaceChildren(...w.sinks.map((k) => el("li", { text: `${k.name} (${k.type})` })));
            if (hasRedis()) drawTables(); else drawReview();
          } })),
        result));
    redraw();
    drawReview();
  };

  const config = () => {
    const chosen = w.tables.filter((t) => t.chosen);
    const exclude = {};
    for (const t of chosen) {
      const off = t.columns.filter((c) => !c.chosen).map((c) => c.name);
      if (off.length) exclude[`${t.schema}.${t.table}`] = off;
    }
    const source = { url: w.url, tables: chosen.map((t) => `${t.schema}.${t.table}`) };
    if (Object.keys(exclude).length) source.exclude_columns = exclude;
    return { pipeline: { name: nameF.input.value.trim() }, source, sinks: w.sinks };
  };

  const drawReview = () => {
    review.replaceChildren(el("h2", { text: "4. Name and review" }), nameF.node || nameF.wrap(),
      el("button", { type: "button", text: "Review", onclick: () => {
        const c = config();
        const shown = JSON.parse(JSON.stringify(c));
        shown.source.url = shown.source.url.replace(/:[^:@/]*@/, ":••••@");
        for (const k of shown.sinks) { if (k.secret) k.secret = "••••"; if (k.url) k.url = k.url.replace(/:[^:@/]*@/, ":••••@"); }
        const out = el("div", { class: "errors" });
        review.replaceChildren(el("h2", { text: "4. Name and review" }), nameF.node,
          el("pre", { class: "review", text: JSON.stringify(shown, null, 2) }), out,
          el("button", { type: "button", text: "Create pipeline", onclick: async () => {
            nameF.clear();
            try {
              const v = await api("POST", "/v1/pipelines", c);
              toast(`Created ${v.name}.`);
              location.hash = `#/pipelines/${encodeURIComponent(v.name)}`;
            } catch (e) {
              if ((e.body.problems || []).some((p) => p.startsWith("pipeline.name"))) nameF.fail(e.body.problems.find((p) => p.startsWith("pipeline.name")));
              out.replaceChildren(errorBox(e));
            }
          } }));
      } }));
  };

  render(el("h1", { text: "New pipeline" }),
    el("form", { class: "card", onsubmit: testSource, "aria-labelledby": "src-h" },
      el("h2", { id: "src-h", text: "1. Source" }),
      el("div", { class: "fields" }, host.wrap(), port.wrap(), db.wrap(), user.wrap(), pass.wrap()),
      el("button", { type: "submit", text: "Test connection" }), srcResult),
    tablesBox, sinksBox, review);
  host.input.focus();
}

// ---------------------------------------------------------------------------------
// Consumers: a token for one SSE or pull sink, its URL and snippets

function consumersView() {
  const out = el("div", { "aria-live": "polite" });
  const form = el("form", { class: "card inline" });
  render(el("h1", { text: "Consumers" }),
    el("p", { class: "muted", text: "A consumer gets a token that reads one SSE or pull sink and nothing else. Its secret is shown once." }),
    form, out);
  api("GET", "/v1/pipelines").then(({ pipelines }) => {
    const choices = pipelines.flatMap((p) => p.sinks.filter((k) => k.type === "sse" || k.type === "pull").map((k) => ({ p, k })));
    if (!choices.length) {
      form.replaceChildren(el("p", { text: "No pipeline has an SSE or pull sink yet: add one to a pipeline first." }));
      return;
    }
    const sink = el("select", { id: "consumer-sink" }, choices.map((c, i) => el("option", { value: i, text: `${c.p.name} / ${c.k.name} (${c.k.type})` })));
    const tables = el("fieldset", {}, el("legend", { text: "Tables (none checked: all)" }));
    const name = field("consumer-name", "Consumer name", { required: true, maxlength: 200 });
    const drawTables = () => {
      const c = choices[Number(sink.value)];
      tables.replaceChildren(el("legend", { text: "Tables (none checked: all the sink takes)" }),
        ...c.p.tables.map((t) => el("div", {}, el("input", { type: "checkbox", id: `ct-${t}`, value: t }), el("label", { for: `ct-${t}`, text: ` ${t}` }))));
    };
    sink.addEventListener("change", drawTables);
    drawTables();
    form.replaceChildren(el("label", { for: "consumer-sink", text: "Sink" }), sink, tables, name.wrap(),
      el("button", { type: "submit", text: "Create consumer" }));
    form.onsubmit = async (ev) => {
      ev.preventDefault();
      name.clear();
      const c = choices[Number(sink.value)];
      const picked = [...tables.querySelectorAll("input:checked")].map((i) => i.value);
      let t;
      try {
        t = await api("POST", "/v1/tokens", { name: name.input.value, scope: { kind: "consume", pipeline: c.p.name, sink: c.k.name } });
      } catch (e) { name.fail(e.message); return; }
      out.replaceChildren(consumerCard(c.p.name, c.k, picked, t));
    };
  }, (e) => render(errorBox(e)));
}

function consumerCard(pipeline, sink, tables, t) {
  const base = `${location.origin}/v1/pipelines/${encodeURIComponent(pipeline)}/sinks/${encodeURIComponent(sink.name)}`;
  const filter = tables.length ? `tables=${tables.map(encodeURIComponent).join(",")}` : "";
  const snippets = sink.type === "sse" ? {
    curl: `curl -sSN -H 'Authorization: Bearer ${t.token}' '${base}/events${filter ? `?${filter}` : ""}'`,
    JavaScript: `const events = new EventSource("${base}/events?${filter ? `${filter}&` : ""}access_token=${t.token}");\nevents.onmessage = (m) => console.log(JSON.parse(m.data));`,
    Python: `import requests\nwith requests.get("${base}/events", params={${filter ? `"tables": "${tables.join(",")}"` : ""}},\n                  headers={"Authorization": "Bearer ${t.token}"}, stream=True) as r:\n    for line in r.iter_lines():\n        if line.startswith(b"data: "):\n            print(line[6:].decode())`,
  } : {
    curl: `curl -X POST -H 'Authorization: Bearer ${t.token}' '${base}/receive?max=100&wait=10s'\n# then acknowledge: curl -X POST -H 'Authorization: Bearer ${t.token}' -d '{"ids": ["<id>"]}' '${base}/ack'`,
    Python: `import requests\nauth = {"Authorization": "Bearer ${t.token}"}\nbatch = requests.post("${base}/receive", params={"max": 100, "wait": "10s"}, headers=auth).json()\nrequests.post("${base}/ack", json={"ids": [r["id"] for r in batch["records"]]}, headers=auth)`,
  };
  return el("div", { class: "card" },
    el("h2", { text: `Consumer ${t.name}` }),
    el("p", { text: "Its token (shown once; keep it now):" }), el("code", { class: "secret", text: t.token }),
    el("p", { text: "URL:" }), el("code", { class: "secret url", text: sink.type === "sse" ? `${base}/events${filter ? `?${filter}` : ""}` : `${base}/receive` }),
    ...Object.entries(snippets).flatMap(([lang, code]) => {
      const pre = el("pre", { class: "review snippet", "data-lang": lang, text: code });
      return [el("div", { class: "heading" }, el("h3", { text: lang }),
        el("button", { type: "button", class: "link", text: `Copy ${lang}`, onclick: () => navigator.clipboard?.writeText(code).then(() => toast("Copied."), () => toast("Select the text to copy it.")) })), pre];
    }));
}

// ---------------------------------------------------------------------------------
// A sink's waiting room and dead letters

function waitingView(pipeline, sink) {
  const base = `/v1/pipelines/${encodeURIComponent(pipeline)}/sinks/${encodeURIComponent(sink)}`;
  const keys = el("tbody");
  const dead = el("tbody");
  const records = el("div", { "aria-live": "polite" });
  const errors = el("div", { "aria-live": "polite" });
  const bulk = el("div", { class: "actions" });
  render(el("p", {}, el("a", { href: `#/pipelines/${encodeURIComponent(pipeline)}`, text: `← ${pipeline}` })),
    el("h1", { text: `Waiting room of ${sink}` }), errors,
    el("div", { class: "scroll" }, el("table", { class: "grid" },
      el("caption", { class: "sr-only", text: "Parked and delayed keys" }),
      el("thead", {}, el("tr", {}, ["", "Key", "State", "Reason", "Attempts", "Last error", "Records", ""].map((h) => el("th", { scope: "col", text: h })))),
      keys)), bulk, records,
    el("h2", { text: "Dead letters" }),
    el("div", { class: "scroll" }, el("table", { class: "grid" },
      el("thead", {}, el("tr", {}, ["Position", "Key", "Reason", "Attempts", "Last error"].map((h) => el("th", { scope: "col", text: h })))),
      dead)));
  const act = async (what, body) => {
    try {
      const r = await api("POST", `${base}/parked/${what}`, body);
      toast(what === "redrive" ? `Redriven: ${r.redriven}.` : `Skipped: ${r.skipped}.`);
      load();
    } catch (e) { errors.replaceChildren(errorBox(e)); }
  };
  const showRecords = async (key) => {
    try {
      const r = await api("GET", `${base}/parked/records?key=${encodeURIComponent(key)}`);
      records.replaceChildren(el("h2", { text: `Records held for ${key}` }),
        el("ol", {}, r.records.map((x) => el("li", {}, el("code", { text: x.values_hidden ? `${x.id} (values hidden from a read-only token)` : JSON.stringify(x.record) })))));
    } catch (e) { records.replaceChildren(errorBox(e)); }
  };
  const load = async () => {
    try {
      const r = await api("GET", `${base}/parked`);
      keys.replaceChildren(...r.keys.map((k, i) => el("tr", {},
        el("td", {}, can.admin() ? el("input", { type: "checkbox", class: "pick", value: k.key, "aria-label": `Select ${k.key}` }) : null),
        el("th", { scope: "row" }, el("code", { text: k.key })), el("td", { text: k.state }), el("td", { text: k.reason || "" }),
        el("td", { text: String(k.attempts) }), el("td", { text: k.last_error || "" }), el("td", { text: String(k.records) }),
        el("td", {}, el("button", { type: "button", class: "link", text: "Records", "aria-label": `Records of ${k.key}`, onclick: () => showRecords(k.key) }),
          can.admin() ? [" ", el("button", { type: "button", text: "Redrive", "aria-label": `Redrive ${k.key}`, onclick: () => act("redrive", { keys: [k.key] }) }),
            " ", el("button", { type: "button", class: "danger", text: "Skip", "aria-label": `Skip ${k.key}`, onclick: () => act("skip", { keys: [k.key] }) })] : null))));
      if (!r.keys.length) keys.replaceChildren(el("tr", {}, el("td", { colspan: 8, text: "Nothing is waiting." })));
      const picked = () => [...keys.querySelectorAll(".pick:checked")].map((b) => b.value);
      bulk.replaceChildren(...(can.admin() && r.keys.length ? [
        el("button", { type: "button", text: "Redrive selected", onclick: () => act("redrive", { keys: picked() }) }),
        el("button", { type: "button", class: "danger", text: "Skip selected", onclick: () => act("skip", { keys: picked() }) })] : []));
      const d = await api("GET", `${base}/dead`);
      dead.replaceChildren(...(d.dead_letters.length ? d.dead_letters.map((x) => el("tr", {},
        el("td", {}, el("code", { text: x.position })), el("td", {}, el("code", { text: x.key })), el("td", { text: x.reason }),
        el("td", { text: String(x.attempts) }), el("td", { text: x.last_error || "" }))) : [el("tr", {}, el("td", { colspan: 5, text: "No dead letters." }))]));
    } catch (e) { errors.replaceChildren(errorBox(e)); }
  };
  load();
  // The waiting room has no stream: it is read again every few seconds while shown.
  state.poll = setInterval(load, 3000);
}

// ---------------------------------------------------------------------------------
// Settings: tokens, allow-lists, the audit log

function settingsView() {
  const tokens = el("tbody");
  const audit = el("tbody");
  const errors = el("div");
  const lists = el("div");
  const newToken = el("div", { "aria-live": "polite" });
  const tlsBox = el("div");
  api("GET", "/v1/server").then((i) => tlsBox.replaceChildren(el("p", {
    text: i.tls ? `HTTPS with the certificate in ${i.tls_cert} (reloaded when the file changes). Sluice ${i.version}.`
      : `Plain HTTP: start the server with --tls-cert and --tls-key to serve HTTPS. Sluice ${i.version}.`,
  })), (e) => tlsBox.replaceChildren(errorBox(e)));
  const sections = [
    el("h1", { text: "Settings" }), errors,
    el("section", { "aria-labelledby": "tokens-h" }, el("h2", { id: "tokens-h", text: "Tokens" }),
      el("div", { class: "scroll" }, el("table", { class: "grid" },
        el("thead", {}, el("tr", {}, ["Name", "Scope", "Id", "Created", ""].map((h) => el("th", { scope: "col", text: h })))),
        tokens)),
      can.admin() ? tokenForm(newToken, () => loadTokens()) : null, newToken),
    el("section", { "aria-labelledby": "access-h" }, el("h2", { id: "access-h", text: "IP allow-lists" }), lists),
    el("section", { "aria-labelledby": "tls-h" }, el("h2", { id: "tls-h", text: "TLS" }), tlsBox),
  ];
  if (can.admin()) {
    sections.push(el("section", { "aria-labelledby": "audit-h" }, el("h2", { id: "audit-h", text: "Audit log" }),
      el("div", { class: "scroll" }, el("table", { class: "grid" },
        el("thead", {}, el("tr", {}, ["When", "Token", "From", "Action", "Target", "Answer"].map((h) => el("th", { scope: "col", text: h })))),
        audit))));
  }
  render(...sections);
  const loadTokens = () => api("GET", "/v1/tokens").then((v) => {
    tokens.replaceChildren(...v.tokens.map((t) => el("tr", {},
      el("td", { text: t.name }), el("td", { text: t.scope_text || t.scope.kind }), el("td", {}, el("code", { text: t.id })),
      el("td", { text: new Date(t.created_ms).toLocaleString() }),
      el("td", {}, can.admin() ? el("button", { type: "button", class: "danger", text: "Revoke", "aria-label": `Revoke ${t.name}`, onclick: async () => {
        try { await api("DELETE", `/v1/tokens/${encodeURIComponent(t.id)}`); toast(`Revoked ${t.name}.`); loadTokens(); } catch (e) { errors.replaceChildren(errorBox(e)); }
      } }) : null))));
  }, (e) => tokens.replaceChildren(el("tr", {}, el("td", { colspan: 5, text: e.status === 403 ? "Only an admin token lists tokens." : e.message }))));
  loadTokens();
  api("GET", "/v1/access").then((a) => lists.replaceChildren(can.admin() ? accessForm(a) : el("dl", { class: "facts" },
    el("dt", { text: "Management (API, console, metrics)" }), el("dd", { text: a.management === null ? "everyone" : a.management.join(", ") }),
    el("dt", { text: "Consumers (SSE, pull, waiting rooms)" }), el("dd", { text: a.consumers === null ? "everyone" : a.consumers.join(", ") }))),
  (e) => lists.replaceChildren(errorBox(e)));
  if (can.admin()) {
    api("GET", "/v1/audit?limit=200").then((v) => {
      audit.replaceChildren(...v.events.map((e) => el("tr", {},
        el("td", { text: new Date(e.time_ms).toLocaleString() }), el("td", {}, el("code", { text: e.token || "–" })),
        el("td", { text: e.from }), el("td", { text: e.action }), el("td", { text: e.target || "" }), el("td", { text: String(e.status) }))));
    }, (e) => audit.replaceChildren(el("tr", {}, el("td", { colspan: 6, text: e.message }))));
  }
}

/// The allow-lists, one CIDR block or address per line (empty: everyone), effective at
/// the next request.
function accessForm(a) {
  const area = (id, label, list) => {
    const t = el("textarea", { id, rows: 3, "aria-describedby": `${id}-help ${id}-error`, spellcheck: "false" });
    t.value = list === null ? "" : list.join("\n");
    return { t, node: el("div", { class: "field" }, el("label", { for: id, text: label }), t,
      el("p", { id: `${id}-help`, class: "muted", text: "One CIDR block or address per line; empty: everyone." }),
      el("p", { id: `${id}-error`, class: "field-error", role: "alert" })) };
  };
  const m = area("allow-management", "Management (API, console, metrics)", a.management);
  const c = area("allow-consumers", "Consumers (SSE, pull, waiting rooms)", a.consumers);
  const force = el("input", { type: "checkbox", id: "allow-force" });
  const parse = (t) => { const l = t.value.split(/[\s,]+/).filter(Boolean); return l.length ? l : null; };
  return el("form", { class: "card inline", onsubmit: async (ev) => {
    ev.preventDefault();
    for (const f of [m, c]) { f.node.querySelector(".field-error").textContent = ""; f.t.removeAttribute("aria-invalid"); }
    try {
      await api("PUT", "/v1/access", { management: parse(m.t), consumers: parse(c.t), force: force.checked });
      toast("Allow-lists saved: they apply from the next request.");
    } catch (e) {
      // A refusal names the list it concerns; the management list when it would shut you out.
      const which = /consumer/i.test(e.message) && !/management/i.test(e.message) ? c : m;
      which.node.querySelector(".field-error").textContent = e.message;
      which.t.setAttribute("aria-invalid", "true");
    }
  } }, m.node, c.node,
  el("p", {}, force, el("label", { for: "allow-force", text: " Apply even if it shuts out this browser's address" })),
  el("button", { type: "submit", text: "Save allow-lists" }));
}

/// A form that makes an admin or read-only token and shows its secret once.
function tokenForm(out, done) {
  const name = el("input", { id: "token-name", required: true, maxlength: 200 });
  const scope = el("select", { id: "token-scope" }, el("option", { value: "read", text: "read-only" }), el("option", { value: "admin", text: "admin" }));
  const err = el("p", { class: "field-error", id: "token-name-error", role: "alert" });
  return el("form", { class: "card inline", onsubmit: async (ev) => {
    ev.preventDefault();
    err.textContent = "";
    try {
      const t = await api("POST", "/v1/tokens", { name: name.value, scope: { kind: scope.value } });
      out.replaceChildren(el("div", { class: "notice" },
        el("p", { text: `Token for ${t.name} (shown once; keep it now):` }),
        el("code", { class: "secret", text: t.token })));
      name.value = "";
      done();
    } catch (e) { err.textContent = e.message; name.setAttribute("aria-invalid", "true"); }
  } },
  el("h3", { text: "New token" }),
  el("label", { for: "token-name", text: "What it is for" }), name, err,
  el("label", { for: "token-scope", text: "Scope" }), scope,
  el("button", { type: "submit", text: "Create token" }));
}

// ---------------------------------------------------------------------------------
// Routing

async function route() {
  stopLive();
  if (!state.token) return signinView();
  if (!state.me) {
    try { state.me = await api("GET", "/v1/whoami"); } catch (e) {
      sessionStorage.removeItem("sluice.token");
      state.token = null;
      return signinView(e.status === 401 ? "Your token is no longer valid: sign in again." : e.message);
    }
  }
  const nav = document.getElementById("nav");
  nav.hidden = false;
  for (const a of nav.querySelectorAll("[data-needs=admin]")) a.hidden = !can.admin();
  const hash = location.hash.replace(/^#/, "") || "/";
  const m = hash.match(/^\/pipelines\/([^/]+)$/);
  if (m) return pipelineView(decodeURIComponent(m[1]));
  if (hash === "/settings") return settingsView();
  if (hash === "/consumers" && can.admin()) return consumersView();
  const w = hash.match(/^\/pipelines\/([^/]+)\/sinks\/([^/]+)$/);
  if (w) return waitingView(decodeURIComponent(w[1]), decodeURIComponent(w[2]));
  if (hash === "/new" && can.admin()) return wizardView();
  return listView();
}

window.addEventListener("hashchange", route);
document.getElementById("signout").addEventListener("click", () => {
  sessionStorage.removeItem("sluice.token");
  Object.assign(state, { token: null, me: null });
  stopLive();
  signinView("Signed out.");
});
route();
