// Settings: tokens, allow-lists, TLS, the audit log.

import { api, can } from "./api.js";
import { el, errorBox, render, toast } from "./dom.js";

export function settingsView() {
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
  // Only an admin token lists tokens: a read-only one is told so without asking.
  const loadTokens = () => (can.admin() ? api("GET", "/v1/tokens") : Promise.reject({ status: 403 })).then((v) => {
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
    el("dt", { text: "Consumers (served sinks, waiting rooms)" }), el("dd", { text: a.consumers === null ? "everyone" : a.consumers.join(", ") }))),
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
  const c = area("allow-consumers", "Consumers (served sinks, waiting rooms)", a.consumers);
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
