// A sink's settings as a form, built from what GET /v1/sink-types says of each type, in
// the order the type declares them (its main settings first): required settings first,
// the optional ones under "More settings", shown open when the type requires nothing
// but its name (its main setting is then an optional one, e.g. one of two ways to say
// where records go); secrets as password inputs; choices as a select; booleans as
// checkboxes; lists of strings as text, one item per line or comma; objects as JSON.
// Only what the user filled in is sent: the server applies the defaults.
//
// Invariant: no sink type is named here; a new type on the server needs no change.

import { el } from "./dom.js";

const MASK = "••••";

/// Whether a type's field is a secret.
function isSecret(types, type, key) {
  return !!types?.get(type)?.fields?.find((f) => f.name === key)?.secret;
}

/// A sink's settings as shown to people: its secret fields masked, as are passwords in
/// URLs and what the server already redacted.
function maskSink(types, sink) {
  const out = {};
  for (const [k, v] of Object.entries(sink)) {
    if (v !== null && v !== undefined && v !== "" && isSecret(types, sink.type, k)) out[k] = MASK;
    else out[k] = maskValue(v);
  }
  return out;
}

/// Passwords in URLs and redacted values masked, anywhere in `v`.
function maskValue(v) {
  if (typeof v === "string") return v === "<redacted>" ? MASK : v.replace(/(:\/\/[^:@/]*):[^@/]*@/, `$1:${MASK}@`);
  if (Array.isArray(v)) return v.map(maskValue);
  if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, maskValue(x)]));
  return v;
}

/// A pipeline's configuration as shown to people.
export function maskConfig(types, config) {
  const shown = maskValue(config);
  if (Array.isArray(config?.sinks)) shown.sinks = config.sinks.map((k) => maskSink(types, k));
  return shown;
}

const describe = (f) => {
  const parts = [f.description || ""];
  if (f.default !== null && f.default !== undefined && f.default !== "" && !(Array.isArray(f.default) && !f.default.length)
      && !(typeof f.default === "object" && !Array.isArray(f.default) && !Object.keys(f.default).length)) {
    parts.push(`Default: ${typeof f.default === "object" ? JSON.stringify(f.default) : f.default}.`);
  }
  if (f.kind === "array") parts.push("One item per line (or separated by commas).");
  if (f.kind === "object") parts.push("As JSON.");
  return parts.filter(Boolean).join(" ");
};

/// One input for one field; `read()` answers its value, or undefined when left to its
/// default, and throws a message when it cannot be read.
function input(prefix, f) {
  const id = `${prefix}-${f.name}`;
  const help = describe(f);
  const describedBy = `${id}-error${help ? ` ${id}-help` : ""}`;
  const error = el("p", { id: `${id}-error`, class: "field-error", role: "alert" });
  let control;
  let read;
  if (f.kind === "boolean") {
    control = el("input", { type: "checkbox", id, checked: f.default === true, "aria-describedby": describedBy });
    read = () => (control.checked === (f.default === true) ? undefined : control.checked);
  } else if (Array.isArray(f.choices) && f.choices.length) {
    const blank = f.required ? "Choose…" : (f.default !== null && f.default !== undefined ? `(default: ${f.default})` : "(default)");
    control = el("select", { id, "aria-describedby": describedBy },
      el("option", { value: "", text: blank }), f.choices.map((c) => el("option", { value: String(c), text: String(c) })));
    read = () => {
      if (control.value === "") return undefined;
      const c = f.choices.find((x) => String(x) === control.value);
      return c === undefined ? control.value : c;
    };
  } else if (f.kind === "array" || f.kind === "object") {
    control = el("textarea", { id, rows: f.kind === "object" ? 4 : 2, spellcheck: "false", "aria-describedby": describedBy });
    read = () => {
      const text = control.value.trim();
      if (!text) return undefined;
      if (f.kind === "array") return text.split(/[\n,]/).map((s) => s.trim()).filter(Boolean);
      try {
        const v = JSON.parse(text);
        if (!v || typeof v !== "object" || Array.isArray(v)) throw new Error();
        return v;
      } catch { throw new Error("Not a JSON object, e.g. {\"key\": \"value\"}."); }
    };
  } else {
    const numeric = f.kind === "integer" || f.kind === "number";
    const shown = f.default !== null && f.default !== undefined && typeof f.default !== "object" ? String(f.default) : null;
    control = el("input", { id, autocomplete: "off", type: f.secret ? "password" : numeric ? "number" : "text",
      step: f.kind === "integer" ? "1" : f.kind === "number" ? "any" : null, placeholder: f.secret ? null : shown,
      required: !!f.required, "aria-describedby": describedBy });
    read = () => {
      const text = control.value.trim();
      if (text === "") return undefined;
      if (!numeric) return f.secret ? control.value : text;
      const n = Number(text);
      if (!Number.isFinite(n) || (f.kind === "integer" && !Number.isInteger(n))) throw new Error(f.kind === "integer" ? "A whole number." : "A number.");
      return n;
    };
  }
  const label = el("label", { for: id, text: f.name });
  const node = f.kind === "boolean"
    ? el("div", { class: "field" }, el("div", {}, control, label), help ? el("p", { id: `${id}-help`, class: "muted", text: help }) : null, error)
    : el("div", { class: "field" }, label, control, help ? el("p", { id: `${id}-help`, class: "muted", text: help }) : null, error);
  return {
    f, node, control,
    value() {
      error.textContent = "";
      control.removeAttribute("aria-invalid");
      let v;
      try { v = read(); } catch (e) { return this.fail(e.message); }
      if (v === undefined && f.required) return this.fail("Required.");
      return { ok: true, v };
    },
    fail(text) { error.textContent = text; control.setAttribute("aria-invalid", "true"); return { ok: false }; },
  };
}

/// The form for a new sink. `types`: the server's sink types (a Map); `tables()`: the
/// tables it may take (for a checkbox each, none checked: all), null for a list, or false
/// when the page has its own table choice (the sink takes them all); `taken`: sink names
/// already used.
export function sinkForm(types, { prefix = "sink", tables = null, taken = () => [] } = {}) {
  const type = el("select", { id: `${prefix}-type`, "aria-describedby": `${prefix}-type-help` },
    [...types.values()].map((t) => el("option", { value: t.type, text: t.type })));
  const typeHelp = el("p", { id: `${prefix}-type-help`, class: "muted" });
  const nameId = `${prefix}-name`;
  const name = el("input", { id: nameId, autocomplete: "off", required: true, "aria-describedby": `${nameId}-error` });
  const nameError = el("p", { id: `${nameId}-error`, class: "field-error", role: "alert" });
  const settings = el("div", { class: "sink-settings" });
  let inputs = [];
  let tablesInput = null;
  const draw = () => {
    const t = types.get(type.value);
    typeHelp.textContent = t?.description || "";
    const fields = (t?.fields || []).filter((f) => f.name !== "name" && f.name !== "type" && !(f.name === "tables" && tables === false));
    inputs = [];
    tablesInput = null;
    const shown = [];
    for (const f of fields) {
      if (f.name === "tables" && tables) {
        const set = el("fieldset", { class: "sink-tables" });
        const fill = () => {
          const was = new Set([...set.querySelectorAll("input:checked")].map((i) => i.value));
          const list = tables();
          set.replaceChildren(el("legend", { text: "Tables (none checked: every table of the pipeline)" }),
            ...(list.length ? list.map((tb) => el("div", {},
              el("input", { type: "checkbox", id: `${prefix}-table-${tb}`, value: tb, checked: was.has(tb) }),
              el("label", { for: `${prefix}-table-${tb}`, text: ` ${tb}` }))) : [el("p", { class: "muted", text: "No table chosen yet." })]),
            f.description ? el("p", { class: "muted", text: f.description }) : "");
        };
        fill();
        tablesInput = { f, node: set, fill, value: () => {
          const picked = [...set.querySelectorAll("input:checked")].map((i) => i.value);
          return { ok: true, v: picked.length ? picked : undefined };
        } };
        shown.push(tablesInput);
        continue;
      }
      const i = input(prefix, f);
      inputs.push(i);
      shown.push(i);
    }
    const required = shown.filter((i) => i.f.required);
    const optional = shown.filter((i) => !i.f.required);
    settings.replaceChildren(...required.map((i) => i.node),
      optional.length ? el("details", { class: "more", open: !required.length }, el("summary", { text: "More settings" }), ...optional.map((i) => i.node)) : "");
  };
  type.addEventListener("change", draw);
  draw();
  const node = el("div", { class: "sink-form" },
    el("div", { class: "field" }, el("label", { for: nameId, text: "Sink name" }), name, nameError),
    el("div", { class: "field" }, el("label", { for: `${prefix}-type`, text: "Type" }), type, typeHelp),
    settings);
  return {
    node,
    type: () => type.value,
    /// The sink's settings as the API takes them, or null (with the reasons shown by the
    /// fields) when something is missing or unreadable.
    spec() {
      let ok = true;
      nameError.textContent = "";
      name.removeAttribute("aria-invalid");
      const n = name.value.trim();
      const fail = (text) => { nameError.textContent = text; name.setAttribute("aria-invalid", "true"); ok = false; };
      if (!n) fail("Required.");
      else if (taken().includes(n)) fail(`A sink named ${n} exists already.`);
      const spec = { name: n, type: type.value };
      for (const i of [...inputs, ...(tablesInput ? [tablesInput] : [])]) {
        const r = i.value();
        if (!r.ok) { ok = false; continue; }
        if (r.v !== undefined) spec[i.f.name] = r.v;
      }
      if (!ok) {
        // An error under "More settings" is shown, not hidden.
        const bad = node.querySelector("[aria-invalid=true]");
        const more = bad?.closest("details");
        if (more) more.open = true;
        bad?.focus();
        return null;
      }
      return spec;
    },
  };
}
