// Sluice's web console: a single page over the management API (/v1), with no build step
// and nothing fetched from the network (everything is served by the binary). This module
// routes the address's #fragment to a page; each page is a module of its own.
//
// Invariants:
// - What the signed-in token's scope cannot do is not rendered (not merely disabled).
// - Showing a page stops the last page's live view and clears its notices.

import { api, can, signOut, state, stopLive } from "./api.js";
import { pageChanged } from "./dom.js";
import { signinView } from "./signin.js";
import { listView } from "./pipelines.js";
import { pipelineView } from "./pipeline.js";
import { wizardView } from "./wizard.js";
import { waitingView } from "./waiting.js";
import { consumersView } from "./consumers.js";
import { settingsView } from "./settings.js";

async function route() {
  stopLive();
  pageChanged();
  if (!state.token) return signinView(null, route);
  if (!state.me) {
    try { state.me = await api("GET", "/v1/whoami"); } catch (e) {
      signOut();
      return signinView(e.status === 401 ? "Your token is no longer valid: sign in again." : e.message, route);
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
  signOut();
  pageChanged();
  signinView("Signed out.", route);
});
route();
