// New pipeline: source, tables and columns, sinks (their forms from GET /v1/sink-types),
// name, review.

import { api, capable, sinkTypes } from "./api.js";
import { el, errorBox, field, findingsList, render, toast } from "./dom.js";
import { maskConfig, sinkForm } from "./sinkform.js";

export function wizardView() {
  const w = { url: null, database: null, tables: [], sinks: [], types: null };
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
      w.tables = (await api("POST", "/v1/sources/discover", { url: w.url })).tables;
    } catch (e) { tablesBox.replaceChildren(errorBox(e)); return; }
    try { w.types = await sinkTypes(); } catch (e) { w.typesError = e; }
    drawTables();
  };

  // The first sink added that keys rows by their primary key, if any.
  const keyed = () => w.sinks.find((k) => capable(w.types, k.type, "needs_primary_key"));
  const drawTables = () => {
    const needsKey = keyed();
    const rows = w.tables.map((t) => {
      const id = `t-${t.schema}.${t.table}`;
      const blocked = !t.readable ? "the role may not read it: GRANT SELECT on it"
        : (needsKey && !t.primary_key ? `no primary key: a ${needsKey.type} sink keys rows by it` : null);
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
        // PostgreSQL estimates a table's rows once it is analyzed (-1 until then).
        el("span", { class: "muted", text: ` ${t.estimated_rows >= 0 ? `~${t.estimated_rows.toLocaleString()} rows` : "rows not estimated yet"}${t.primary_key ? "" : ", no primary key"}` }),
        blocked ? el("p", { id: `${id}-why`, class: "muted", text: `Not selectable: ${blocked}.` }) : null, cols);
    });
    tablesBox.replaceChildren(el("h2", { id: "tables-h", text: "2. Tables and columns" }),
      rows.length ? el("ul", { class: "plain", "aria-labelledby": "tables-h" }, rows) : el("p", { text: "The source has no tables this role can see." }));
    if (!sinksBox.hasChildNodes()) drawSinks();
  };

  const chosenTables = () => w.tables.filter((t) => t.chosen).map((t) => `${t.schema}.${t.table}`);

  let form = null;

  const drawSinkList = () => {
    sinkList.replaceChildren(...w.sinks.map((k) => el("li", {}, `${k.name} (${k.type}) `,
      el("button", { type: "button", class: "link", text: "Remove", "aria-label": `Remove sink ${k.name}`, onclick: () => {
        w.sinks = w.sinks.filter((x) => x !== k);
        drawSinkList();
        if (capable(w.types, k.type, "needs_primary_key")) drawTables();
        drawReview();
      } }))));
  };

  const drawSinks = () => {
    if (!w.types) {
      sinksBox.replaceChildren(el("h2", { text: "3. Sinks" }), errorBox(w.typesError));
      return;
    }
    const result = el("div", { "aria-live": "polite" });
    const slot = el("div");
    const make = () => {
      // The tables chosen above are the sink's: it is not asked again.
      const f = sinkForm(w.types, { prefix: "sink", tables: false, taken: () => w.sinks.map((k) => k.name) });
      slot.replaceChildren(f.node);
      form = f;
    };
    const verify = async (spec) => {
      result.replaceChildren(el("p", { class: "muted", text: "Verifying…" }));
      try {
        const r = await api("POST", "/v1/sinks/verify", { sink: spec, tables: chosenTables(), database: w.database });
        result.replaceChildren(findingsList(r.findings));
        return r.ok;
      } catch (e) { result.replaceChildren(errorBox(e)); return false; }
    };
    make();
    sinksBox.replaceChildren(el("h2", { text: "3. Sinks" }), sinkList,
      el("div", { class: "card inline" }, slot,
        el("div", { class: "actions" },
          el("button", { type: "button", text: "Verify", onclick: () => { const s = form.spec(); if (s) verify(s); } }),
          el("button", { type: "button", text: "Add sink", onclick: async () => {
            const s = form.spec();
            if (!s || !(await verify(s))) return;
            w.sinks.push(s);
            drawSinkList();
            make();
            result.replaceChildren();
            if (capable(w.types, s.type, "needs_primary_key")) drawTables();
            drawReview();
          } })),
        result));
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
        const shown = maskConfig(w.types, c);
        const out = el("div", { class: "errors" });
        review.replaceChildren(el("h2", { text: "4. Name and review" }), nameF.node,
          el("pre", { class: "review", text: JSON.stringify(shown, null, 2) }), out,
          el("button", { type: "button", text: "Create pipeline", onclick: async () => {
            nameF.clear();
            try {
              const v = await api("POST", "/v1/pipelines", c);
              toast(`Created ${v.name}.`, { next: true });
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
