// The pipelines list, updated live, and the words for a pipeline's state.

import { api, can, live } from "./api.js";
import { bytes, el, errorBox, rate, render } from "./dom.js";

/// A running pipeline whose source has not connected yet in this run: no status yet, or
/// not streaming with no reconnect and no error (a source that lost its connection has
/// counted a reconnect or kept its error). Once the source streams, the status says its
/// slot is active and present.
export function starting(p) {
  if (p.state !== "running") return false;
  const s = p.status;
  return !s || (!s.streaming && !s.reconnects && !s.last_error);
}

/// "1 client" or "n clients".
export function clients(n) {
  return `${n} client${n === 1 ? "" : "s"}`;
}

export function stateBadge(p) {
  const words = { running: "running", paused: "paused", failed: "failed", refused: "refused", stopped: "stopped" };
  if (starting(p)) return el("span", { class: "badge paused", text: "starting…" });
  const streaming = p.state === "running" && !p.status.streaming ? " (source not streaming)" : "";
  return el("span", { class: `badge ${p.state}`, text: `${words[p.state] || p.state}${streaming}` });
}

export function listView() {
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
      // A sink served to clients has no cursor: its connected clients are shown instead.
      const byName = new Map((s?.sinks || []).map((k) => [k.name, k]));
      const served = new Map((s?.served || []).map((k) => [k.name, k]));
      return el("tr", { "data-pipeline": p.name },
        el("th", { scope: "row" }, el("a", { href: `#/pipelines/${encodeURIComponent(p.name)}`, text: p.name })),
        el("td", {}, stateBadge(p)),
        el("td", { text: s ? bytes(s.slot_lag_bytes) : "–" }),
        el("td", { class: "throughput", text: s ? rate(total) : "–" }),
        el("td", {}, p.sinks.map((k) => {
          const st = byName.get(k.name);
          const sv = served.get(k.name);
          return el("span", { class: "chip", text: st ? `${k.name}: ${st.lag_records}` : sv ? `${k.name} (${clients(sv.clients)})` : k.name });
        })));
    }));
  };
  api("GET", "/v1/pipelines").then(fill, (e) => render(errorBox(e)));
  live("/v1/stream/pipelines", "pipelines", fill);
}
