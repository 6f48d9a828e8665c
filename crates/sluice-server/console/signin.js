// Sign-in: a token, checked against /v1/whoami before it is kept for the session.

import { api, can, state } from "./api.js";
import { el, render } from "./dom.js";

/// `done` is called once the token is signed in.
export function signinView(message, done) {
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
    done();
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
