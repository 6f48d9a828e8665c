// Small DOM helpers: elements, form fields, errors and notices.
//
// Invariants:
// - Text from the API is put in the page as text (textContent), never as HTML.
// - A notice belongs to the page it was given on: it hides after a few seconds, and at
//   once when another page is shown (unless it was given for the next page).

export function el(tag, attrs = {}, ...children) {
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

export function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  let v = Number(n);
  while (Math.abs(v) >= 1000 && i < units.length - 1) { v /= 1000; i++; }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function rate(n) {
  return `${Number(n || 0).toLocaleString(undefined, { maximumFractionDigits: 1 })}/s`;
}

/// How long a notice stays.
const NOTICE_MS = 5000;
const notices = { timer: null, next: null };

/// Shows a short notice at the foot of the page. `next`: it is about the page being
/// opened (e.g. "Created x." before showing x), so it is shown there, not here.
export function toast(message, { next = false } = {}) {
  if (next) { notices.next = message; return; }
  const t = document.getElementById("toast");
  t.textContent = message;
  clearTimeout(notices.timer);
  notices.timer = setTimeout(() => { t.textContent = ""; }, NOTICE_MS);
}

/// Called as a page is shown: the last page's notice goes, one given for this page shows.
export function pageChanged() {
  clearTimeout(notices.timer);
  document.getElementById("toast").textContent = "";
  for (const d of document.querySelectorAll("dialog")) d.remove();
  const next = notices.next;
  notices.next = null;
  if (next) toast(next);
}

export function errorBox(e) {
  const box = el("div", { class: "error", role: "alert" }, el("p", { text: e.message }));
  for (const p of e.body?.problems || []) box.append(el("p", { text: p }));
  for (const f of (e.body?.findings || []).filter((f) => !f.ok)) {
    box.append(el("p", {}, el("strong", { text: f.what }), f.fix ? el("span", { text: ` — fix: ${f.fix}` }) : null));
  }
  return box;
}

export function render(...nodes) {
  const main = document.getElementById("main");
  main.replaceChildren(...nodes);
}

/// A labelled input with its help and its error, said next to it.
export function field(id, label, attrs = {}, help, tag = "input") {
  const input = el(tag, { id, name: id, autocomplete: "off", ...attrs, "aria-describedby": `${id}-error${help ? ` ${id}-help` : ""}` });
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
export function findingsList(findings) {
  const failed = findings.filter((f) => !f.ok);
  if (!failed.length) return el("p", { class: "ok-text", text: "Every check passed." });
  return el("ul", { class: "findings" }, failed.map((f) =>
    el("li", {}, el("span", { text: f.what }), f.fix ? el("span", { class: "fix", text: ` Fix: ${f.fix}` }) : null)));
}

/// A modal dialog with a title, content and buttons; removed once closed.
export function dialog(id, title, ...content) {
  const d = el("dialog", { "aria-labelledby": `${id}-h` }, el("h2", { id: `${id}-h`, text: title }), ...content);
  document.body.append(d);
  d.addEventListener("close", () => d.remove());
  d.showModal();
  return d;
}
