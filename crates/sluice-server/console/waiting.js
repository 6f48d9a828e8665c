// A sink's waiting room (keys parked or delayed, their records, redrive and skip) and its
// dead letters.

import { api, can, state } from "./api.js";
import { el, errorBox, render, toast } from "./dom.js";

export function waitingView(pipeline, sink) {
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
