// The management API as the console uses it: the signed-in token, calls that turn every
// error into words, the live streams, and what the server says its sink types are.
//
// Invariants:
// - Every call goes through api(), which sends the signed-in token and turns every error
//   into words (the API's own message), never a bare status code.
// - Live data arrives over one EventSource per page, closed when the page changes.
// - Nothing about a sink type is known here: its settings and capabilities come from
//   GET /v1/sink-types.

import { toast } from "./dom.js";

export const state = { token: sessionStorage.getItem("sluice.token"), me: null, live: null, poll: null, sinkTypes: null };

class ApiError extends Error {
  constructor(status, body) {
    super(body?.error || `The server answered ${status} without an explanation.`);
    this.status = status;
    this.body = body || {};
  }
}

export async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${state.token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, { error: "The server cannot be reached. Is it running, and is this address on its allow-list?" });
  }
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = { error: text.trim() }; }
  if (!res.ok) throw new ApiError(res.status, json);
  return json;
}

export const can = {
  read: () => state.me && ["admin", "read"].includes(state.me.scope.kind),
  admin: () => state.me && state.me.scope.kind === "admin",
};

export function signOut() {
  sessionStorage.removeItem("sluice.token");
  Object.assign(state, { token: null, me: null, sinkTypes: null });
  stopLive();
}

export function stopLive() {
  if (state.live) { state.live.close(); state.live = null; }
  if (state.poll) { clearInterval(state.poll); state.poll = null; }
}

/// An EventSource on a management stream; `on` gets each event's JSON.
export function live(path, event, on) {
  stopLive();
  const src = new EventSource(`${path}?access_token=${encodeURIComponent(state.token)}`);
  src.addEventListener(event, (m) => on(JSON.parse(m.data)));
  src.onerror = () => toast("The live view lost the server; it reconnects by itself.");
  state.live = src;
}

/// The sink types this server has, with their settings and capabilities (asked once per
/// sign-in): a Map from type name to its description.
export async function sinkTypes() {
  if (!state.sinkTypes) {
    const p = api("GET", "/v1/sink-types").then((list) => new Map(list.map((t) => [t.type, t])));
    state.sinkTypes = p;
    p.catch(() => { if (state.sinkTypes === p) state.sinkTypes = null; });
  }
  return state.sinkTypes;
}

/// A capability of a sink type, false when the type is unknown to this server.
export function capable(types, type, capability) {
  return !!types?.get(type)?.capabilities?.[capability];
}
