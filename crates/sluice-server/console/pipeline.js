// One pipeline's page: its state and figures live, its charts, its sinks (added and
// removed here), its tables, and pause, resume and delete.

import { api, can, capable, live, sinkTypes } from "./api.js";
import { sinkCharts } from "./charts.js";
import { bytes, dialog, el, errorBox, findingsList, rate, render, toast } from "./dom.js";
import { clients, starting, stateBadge } from "./pipelines.js";
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
    charts.only(p.sinks.map((k) => k.name));
    charts.live(s);
    head.replaceChildren(el("h1", { text: p.name }), stateBadge(p));
    errors.replaceChildren(
      p.error ? el("div", { class: "error", role: "alert" }, el("p", { text: p.error })) : "",
      s?.last_error ? el("p", { class: "notice", text: `Last source error: ${s.last_error}` }) : "",
      (p.findings || []).length ? errorBox({ message: "The checks failed at start:", body: { findings: p.findings } }) : "");
    const budget = p.config?.log?.max_bytes;
    const pending = starting(p);
    const rows = [
      ["Tables", p.tables.join(", ")],
      ["Slot", `${p.slot}${pending ? " (starting…)" : s?.slot_active === false ? " (inactive)" : ""}`],
      ["Slot WAL status", pending ? "starting…" : s?.slot_wal_status || "–"],
      ["WAL retained by the slot", bytes(s?.slot_retained_bytes)],
      ["Slot lag", bytes(s?.slot_lag_bytes)],
      ["Log", s?.log || "–"],
      ["Log size", budget ? `${bytes(s?.log_bytes)} of ${bytes(budget)}` : bytes(s?.log_bytes)],
      ["Source reconnects", s ? String(s.reconnects) : "–"],
      ["Heartbeat", s?.heartbeat_age_secs !== undefined ? `${s.heartbeat_age_secs.toFixed(1)} s ago` : pending ? "starting…" : "off"],
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
    const served = new Map((s?.served || []).map((k) => [k.name, k]));
    sinks.replaceChildren(...p.sinks.map((k) => {
      const st = byName.get(k.name);
      const sv = served.get(k.name);
      const waiting = capable(types, k.type, "waiting_room");
      const figures = st
        ? [el("td", { text: String(st.lag_records) }), el("td", { text: rate(st.per_second) }),
          el("td", { text: String(st.delivered) }), el("td", { text: String(st.failures) })]
        : sv
          // A sink served to clients has no cursor: each client reads the log on its own,
          // so it has no records behind; its clients and the events sent to them instead.
          ? [el("td", { colspan: 4, title: "Each client reads the log at its own pace: no records behind." },
            `${clients(sv.clients)} connected, ${sv.sent.toLocaleString()} event${sv.sent === 1 ? "" : "s"} sent`)]
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
      el("p", { class: "muted", text: "The pipeline is updated and restarts with the new sink, which first receives the changes the pipeline's log still holds, then each new one." }),
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
    // The configuration goes back as the server answered it, secrets as "<redacted>": the
    // server keeps each stored secret by its sink's name and type, whatever the sink's place.
    const out = el("div");
    const d = dialog("remove", `Remove sink ${sink}?`,
      el("p", { text: `The pipeline ${name} is updated and restarts without ${sink}; what it delivered stays where it went.` }),
      out,
      el("div", { class: "actions" },
        el("button", { type: "button", class: "secondary", text: "Cancel", onclick: () => d.close() }),
        el("button", { type: "button", class: "danger", text: "Remove", onclick: async () => {
          const next = { ...config, sinks: config.sinks.filter((_, i) => i !== at) };
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
