// One pipeline's page: its state and figures live, its charts, its sinks (added and
// removed here), its tables, and pause, resume and delete.

import { api, can, capable, live, sinkTypes } from "./api.js";
import { sinkCharts } from "./charts.js";
import { bytes, dialog, el, errorBox, findingsList, rate, render, toast } from "./dom.js";
import { slotPending, starting, stateBadge } from "./pipelines.js";
import { maskConfig, sinkForm } from "./sinkform.js";

const path = (name) => `/v1/pipelines/${encodeURIComponent(name)}`;

/// The database a source URL names (for a sink's checks), if it can be read.
function databaseOf(url) {
  try {
    const u = new URL(url);
    const db = decodeURIComponent(u.pathname.replace(/^\//, ""));
    if (db) return db;
  } catch { /* a key=value connection string */ }
  return /(?:^|\s)dbname=(\S+)/.exec(url || "")?.[1];
}

/// The configuration's values holding "<redacted>" in `v`, as [path, value] pairs.
function redacted(v, at = []) {
  if (typeof v === "string") return v.includes("<redacted>") ? [[at, v]] : [];
  if (Array.isArray(v)) return v.flatMap((x, i) => redacted(x, [...at, i]));
  if (v && typeof v === "object") return Object.entries(v).flatMap(([k, x]) => redacted(x, [...at, k]));
  return [];
}

function setAt(obj, at, value) {
  let o = obj;
  for (const k of at.slice(0, -1)) o = o[k];
  o[at[at.length - 1]] = value;
}

export function pipelineView(name) {
  const head = el("div", { class: "heading" });
  const facts = el("dl", { class: "facts" });
  const copies = el("section", { "aria-labelledby": "copies-h" });
  const sinks = el("tbody");
  const sinksHead = el("thead");
  const actions = el("div", { class: "actions" });
  const adder = el("div", { "aria-live": "polite" });
  const errors = el("div");
  const typesError = el("div");
  const chartBox = el("div", { class: "charts" });
  const configBox = el("pre", { class: "review", id: "config" });
  const configView = el("details", { class: "config", hidden: true }, el("summary", { text: "Configuration" }), configBox);
  render(head, errors, typesError, facts, copies,
    el("section", { "aria-labelledby": "charts-h" }, el("h2", { id: "charts-h", text: "Lag and throughput, last hour" }), chartBox),
    el("section", { "aria-labelledby": "sinks-h" }, el("h2", { id: "sinks-h", text: "Sinks" }),
      el("div", { class: "scroll" }, el("table", { class: "grid" }, sinksHead, sinks))),
    actions, adder, configView);
  const charts = sinkCharts(chartBox);
  api("GET", `${path(name)}/history`).then((h) => charts.history(h), () => {});
  let types = null;
  let last = null;
  let shownConfig = null;
  const editable = (p) => can.admin() && p.origin.kind === "api";

  const fill = (p) => {
    last = p;
    const s = p.status;
    charts.live(s);
    head.replaceChildren(el("h1", { text: p.name }), stateBadge(p));
    errors.replaceChildren(
      p.error ? el("div", { class: "error", role: "alert" }, el("p", { text: p.error })) : "",
      s?.last_error ? el("p", { class: "notice", text: `Last source error: ${s.last_error}` }) : "",
      (p.findings || []).length ? errorBox({ message: "The checks failed at start:", body: { findings: p.findings } }) : "");
    const budget = p.config?.log?.max_bytes;
    const pending = slotPending(p);
    const rows = [
      ["Tables", p.tables.join(", ")],
      ["Slot", `${p.slot}${pending ? " (starting…)" : s?.slot_active === false ? " (inactive)" : ""}`],
      ["Slot WAL status", pending ? "starting…" : s?.slot_wal_status || "–"],
      ["WAL retained by the slot", bytes(s?.slot_retained_bytes)],
      ["Slot lag", bytes(s?.slot_lag_bytes)],
      ["Log on disk", budget ? `${bytes(s?.log_bytes)} of ${bytes(budget)}` : bytes(s?.log_bytes)],
      ["Source reconnects", s ? String(s.reconnects) : "–"],
      ["Heartbeat", s?.heartbeat_age_secs !== undefined ? `${s.heartbeat_age_secs.toFixed(1)} s ago` : starting(p) ? "starting…" : "off"],
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
    const edit = editable(p) && p.sinks.length > 1;
    sinksHead.replaceChildren(el("tr", {}, ["Sink", "Type", "Records behind", "Throughput", "Delivered", "Failures", ...(edit ? [""] : [])]
      .map((h) => el("th", { scope: "col", text: h }))));
    const byName = new Map((s?.sinks || []).map((k) => [k.name, k]));
    sinks.replaceChildren(...p.sinks.map((k) => {
      const st = byName.get(k.name);
      const waiting = capable(types, k.type, "waiting_room");
      const figures = st
        ? [el("td", { text: String(st.lag_records) }), el("td", { text: rate(st.per_second) }),
          el("td", { text: String(st.delivered) }), el("td", { text: String(st.failures) })]
        : s && capable(types, k.type, "served")
          // A sink served to clients has no cursor: each client reads the log on its own,
          // and the status has no figures for it.
          ? [el("td", { colspan: 4, class: "muted", text: "Served to each client as it reads: the status gives no figures for it." })]
          : [el("td", { text: "–" }), el("td", { text: "–" }), el("td", { text: "–" }), el("td", { text: "–" })];
      return el("tr", { "data-sink": k.name }, el("th", { scope: "row" }, waiting
        ? el("a", { href: `#/pipelines/${encodeURIComponent(p.name)}/sinks/${encodeURIComponent(k.name)}`, text: k.name, title: "Its waiting room and dead letters" })
        : k.name), el("td", { text: k.type }), ...figures,
        edit ? el("td", {}, el("button", { type: "button", class: "link danger-text", text: "Remove", "aria-label": `Remove sink ${k.name}`, onclick: () => removeSink(k.name) })) : null);
    }));
    if (editable(p)) {
      actions.replaceChildren(
        p.state === "paused"
          ? el("button", { type: "button", text: "Resume", onclick: () => act("POST", `${path(p.name)}/resume`, "Resumed.") })
          : el("button", { type: "button", text: "Pause", onclick: () => act("POST", `${path(p.name)}/pause`, "Paused: the slot keeps the changes meanwhile.") }),
        el("button", { type: "button", text: "Add tables…", onclick: () => addTables(p, adder, types) }),
        el("button", { type: "button", text: "Add sink…", onclick: () => addSink(adder) }),
        el("button", { type: "button", class: "danger", text: "Delete…", onclick: () => confirmDelete(p) }));
    } else if (can.admin()) {
      actions.replaceChildren(el("p", { class: "muted", text: `This pipeline comes from ${p.origin.path}: change it there.` }));
    } else {
      actions.replaceChildren();
    }
    // The configuration as the server keeps it, secrets masked; redrawn only when it
    // changes, so an open view stays open.
    const text = p.config ? JSON.stringify(maskConfig(types, p.config), null, 2) : null;
    if (text !== shownConfig) {
      shownConfig = text;
      configView.hidden = !text;
      configBox.textContent = text || "";
    }
  };
  const act = async (method, to, done) => {
    try { fill(await api(method, to)); toast(done); } catch (e) { errors.replaceChildren(errorBox(e)); }
  };

  /// The pipeline's configuration now (the stream's views may not carry it).
  const current = async () => (await api("GET", path(name))).config;

  const addSink = async (box) => {
    let t;
    try { t = types || await sinkTypes(); } catch (e) { box.replaceChildren(errorBox(e)); return; }
    const p = last;
    const form = sinkForm(t, { prefix: "new-sink", tables: () => p.tables, taken: () => p.sinks.map((k) => k.name) });
    const out = el("div", { "aria-live": "polite" });
    const verify = async (spec, config) => {
      out.replaceChildren(el("p", { class: "muted", text: "Verifying…" }));
      const r = await api("POST", "/v1/sinks/verify", { sink: spec, tables: p.tables, database: databaseOf(config.source?.url) });
      out.replaceChildren(findingsList(r.findings));
      return r.ok;
    };
    box.replaceChildren(el("div", { class: "card inline" }, el("h2", { text: "Add a sink" }),
      el("p", { class: "muted", text: "The pipeline is updated and restarts with the new sink, which starts at the log's current end." }),
      form.node,
      el("div", { class: "actions" },
        el("button", { type: "button", text: "Verify", onclick: async () => {
          const spec = form.spec();
          if (!spec) return;
          try { await verify(spec, await current()); } catch (e) { out.replaceChildren(errorBox(e)); }
        } }),
        el("button", { type: "button", text: "Add sink", onclick: async () => {
          const spec = form.spec();
          if (!spec) return;
          try {
            const config = await current();
            if (!(await verify(spec, config))) return;
            config.sinks = [...config.sinks, spec];
            fill(await api("PUT", path(name), config));
            box.replaceChildren();
            toast(`Added sink ${spec.name}.`);
          } catch (e) { out.replaceChildren(errorBox(e)); }
        } }),
        el("button", { type: "button", class: "secondary", text: "Cancel", onclick: () => box.replaceChildren() })),
      out));
    box.querySelector("select, input")?.focus();
  };

  const removeSink = async (sink) => {
    let config;
    try { config = await current(); } catch (e) { errors.replaceChildren(errorBox(e)); return; }
    const at = config.sinks.findIndex((k) => k.name === sink);
    if (at < 0) return;
    // The server gives back a stored secret sent as "<redacted>" by the sink's place in
    // the list: the sinks after this one move up a place, so their secrets are asked for.
    const moved = config.sinks.slice(at + 1).flatMap((k, i) => redacted(k).map(([p, v]) => ({ sink: k, at: [at + 1 + i, ...p], value: v })));
    const asks = moved.map((m, i) => {
      const id = `secret-again-${i}`;
      const whole = m.value === "<redacted>";
      // A setting redacted whole may be a JSON object or list (e.g. headers).
      const kind = m.at.length === 2 ? types?.get(m.sink.type)?.fields?.find((f) => f.name === m.at[1])?.kind : null;
      const json = whole && (kind === "object" || kind === "array");
      const input = json ? el("textarea", { id, rows: 3, spellcheck: "false", required: true })
        : el("input", { id, type: "password", autocomplete: "off", required: true });
      return { m, whole, json, input, node: el("div", { class: "field" },
        el("label", { for: id, text: `${m.sink.name}: ${m.at.slice(1).join(".")}${whole ? (json ? " (as JSON)" : "") : " (the password in it)"}` }), input) };
    });
    const out = el("div");
    const d = dialog("remove", `Remove sink ${sink}?`,
      el("p", { text: `The pipeline ${name} is updated and restarts without ${sink}; what it delivered stays where it went.` }),
      asks.length ? el("p", { text: "The server keeps stored secrets by each sink's place in the list, and the sinks after this one move up: give these again." }) : "",
      ...asks.map((a) => a.node), out,
      el("div", { class: "actions" },
        el("button", { type: "button", class: "secondary", text: "Cancel", onclick: () => d.close() }),
        el("button", { type: "button", class: "danger", text: "Remove", onclick: async () => {
          const next = JSON.parse(JSON.stringify(config));
          for (const a of asks) {
            if (!a.input.value) { out.replaceChildren(el("p", { class: "field-error", text: "Each secret above is needed." })); a.input.focus(); return; }
            let value = a.whole ? a.input.value : a.m.value.replace("<redacted>", encodeURIComponent(a.input.value));
            if (a.json) {
              try { value = JSON.parse(a.input.value); } catch { out.replaceChildren(el("p", { class: "field-error", text: `${a.m.sink.name}: ${a.m.at.slice(1).join(".")} is not JSON.` })); a.input.focus(); return; }
            }
            setAt(next.sinks, a.m.at, value);
          }
          next.sinks.splice(at, 1);
          try {
            fill(await api("PUT", path(name), next));
            d.close();
            toast(`Removed sink ${sink}.`);
          } catch (e) { out.replaceChildren(errorBox(e)); }
        } })));
  };

  const load = () => api("GET", path(name)).then(fill, (e) => render(errorBox(e)));
  load();
  sinkTypes().then((t) => { types = t; if (last) fill(last); }, (e) => typesError.replaceChildren(errorBox(e)));
  live(`/v1/stream/pipelines/${encodeURIComponent(name)}`, "pipeline", fill);
}

/// Tables of the source not captured yet, to add (each is backfilled while the others
/// stream).
async function addTables(p, box, types) {
  box.replaceChildren(el("p", { class: "muted", text: "Looking at the source's tables…" }));
  let found;
  try { found = await api("GET", `${path(p.name)}/tables`); } catch (e) { box.replaceChildren(errorBox(e)); return; }
  const keyed = p.sinks.find((k) => capable(types, k.type, "needs_primary_key"));
  const fresh = found.tables.filter((t) => !p.tables.includes(`${t.schema}.${t.table}`));
  if (!fresh.length) { box.replaceChildren(el("p", { text: "Every table of the source is captured already." })); return; }
  const items = fresh.map((t) => {
    const name = `${t.schema}.${t.table}`;
    const why = !t.readable ? "the role may not read it" : (keyed && !t.primary_key ? `no primary key: sink ${keyed.name} (${keyed.type}) keys rows by it` : null);
    return el("li", {}, el("input", { type: "checkbox", id: `add-${name}`, value: name, disabled: !!why }),
      el("label", { for: `add-${name}`, text: ` ${name}` }), why ? el("span", { class: "muted", text: ` (not selectable: ${why})` }) : null);
  });
  const out = el("div");
  box.replaceChildren(el("div", { class: "card inline" }, el("h2", { text: "Add tables" }), el("ul", { class: "plain" }, items),
    el("button", { type: "button", text: "Add and backfill", onclick: async () => {
      const picked = [...box.querySelectorAll("input:checked")].map((i) => i.value);
      if (!picked.length) { out.replaceChildren(el("p", { class: "field-error", text: "Choose at least one table." })); return; }
      try {
        const config = (await api("GET", path(p.name))).config;
        config.source.tables = [...config.source.tables, ...picked];
        await api("PUT", path(p.name), config);
        box.replaceChildren();
        toast(`Added ${picked.join(", ")}: backfilling while the others stream.`);
      } catch (e) { out.replaceChildren(errorBox(e)); }
    } }), out));
}

function confirmDelete(p) {
  const keep = el("input", { type: "checkbox", id: "keep-slot" });
  const d = dialog("del", `Delete ${p.name}?`,
    el("p", { text: `This stops the pipeline, drops replication slot ${p.slot} and publication ${p.publication}, and removes its local data and consume tokens.` }),
    el("p", {}, keep, el("label", { for: "keep-slot", text: " Keep the slot and publication (changes keep accumulating in the database)" })),
    el("div", { class: "actions" },
      el("button", { type: "button", text: "Cancel", onclick: () => d.close() }),
      el("button", { type: "button", class: "danger", text: "Delete", onclick: async () => {
        try {
          await api("DELETE", `${path(p.name)}${keep.checked ? "?keep_slot=true" : ""}`);
          d.close();
          toast(`Deleted ${p.name}.`, { next: true });
          location.hash = "#/";
        } catch (e) { d.append(errorBox(e)); }
      } })));
}
