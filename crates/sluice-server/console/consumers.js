// Consumers: a token for one sink the server serves to clients, its URL and snippets.

import { api, capable, sinkTypes } from "./api.js";
import { el, errorBox, field, render, toast } from "./dom.js";

export function consumersView() {
  const out = el("div", { "aria-live": "polite" });
  const form = el("form", { class: "card inline" });
  render(el("h1", { text: "Consumers" }),
    el("p", { class: "muted", text: "A consumer gets a token that reads one sink the server serves to clients (an event stream, or a queue it receives from and acknowledges) and nothing else. Its secret is shown once." }),
    form, out);
  Promise.all([api("GET", "/v1/pipelines"), sinkTypes()]).then(([{ pipelines }, types]) => {
    const choices = pipelines.flatMap((p) => p.sinks.filter((k) => capable(types, k.type, "served")).map((k) => ({ p, k,
      // A served sink with a waiting room is a queue; without, a stream of events.
      queue: capable(types, k.type, "waiting_room") })));
    if (!choices.length) {
      const served = [...types.values()].filter((t) => t.capabilities?.served).map((t) => t.type);
      form.replaceChildren(el("p", { text: `No pipeline has a sink the server serves to clients yet (${served.join(", ") || "none"}): add one to a pipeline first.` }));
      return;
    }
    const sink = el("select", { id: "consumer-sink" }, choices.map((c, i) => el("option", { value: i, text: `${c.p.name} / ${c.k.name} (${c.k.type})` })));
    const tables = el("fieldset", {}, el("legend", { text: "Tables (none checked: all)" }));
    const name = field("consumer-name", "Consumer name", { required: true, maxlength: 200 });
    const drawTables = () => {
      const c = choices[Number(sink.value)];
      tables.replaceChildren(el("legend", { text: "Tables (none checked: all the sink takes)" }),
        ...c.p.tables.map((t) => el("div", {}, el("input", { type: "checkbox", id: `ct-${t}`, value: t }), el("label", { for: `ct-${t}`, text: ` ${t}` }))));
    };
    sink.addEventListener("change", drawTables);
    drawTables();
    form.replaceChildren(el("label", { for: "consumer-sink", text: "Sink" }), sink, tables, name.wrap(),
      el("button", { type: "submit", text: "Create consumer" }));
    form.onsubmit = async (ev) => {
      ev.preventDefault();
      name.clear();
      const c = choices[Number(sink.value)];
      const picked = [...tables.querySelectorAll("input:checked")].map((i) => i.value);
      let t;
      try {
        t = await api("POST", "/v1/tokens", { name: name.input.value, scope: { kind: "consume", pipeline: c.p.name, sink: c.k.name } });
      } catch (e) { name.fail(e.message); return; }
      out.replaceChildren(consumerCard(c.p.name, c.k, c.queue, picked, t));
    };
  }, (e) => render(errorBox(e)));
}

function consumerCard(pipeline, sink, queue, tables, t) {
  const base = `${location.origin}/v1/pipelines/${encodeURIComponent(pipeline)}/sinks/${encodeURIComponent(sink.name)}`;
  const filter = tables.length ? `tables=${tables.map(encodeURIComponent).join(",")}` : "";
  const snippets = !queue ? {
    curl: `curl -sSN -H 'Authorization: Bearer ${t.token}' '${base}/events${filter ? `?${filter}` : ""}'`,
    JavaScript: `const events = new EventSource("${base}/events?${filter ? `${filter}&` : ""}access_token=${t.token}");\nevents.onmessage = (m) => console.log(JSON.parse(m.data));`,
    Python: `import requests\nwith requests.get("${base}/events", params={${filter ? `"tables": "${tables.join(",")}"` : ""}},\n                  headers={"Authorization": "Bearer ${t.token}"}, stream=True) as r:\n    for line in r.iter_lines():\n        if line.startswith(b"data: "):\n            print(line[6:].decode())`,
  } : {
    curl: `curl -X POST -H 'Authorization: Bearer ${t.token}' '${base}/receive?max=100&wait=10s'\n# then acknowledge: curl -X POST -H 'Authorization: Bearer ${t.token}' -d '{"ids": ["<id>"]}' '${base}/ack'`,
    Python: `import requests\nauth = {"Authorization": "Bearer ${t.token}"}\nbatch = requests.post("${base}/receive", params={"max": 100, "wait": "10s"}, headers=auth).json()\nrequests.post("${base}/ack", json={"ids": [r["id"] for r in batch["records"]]}, headers=auth)`,
  };
  return el("div", { class: "card result" },
    el("h2", { text: `Consumer ${t.name}` }),
    el("p", { text: "Its token (shown once; keep it now):" }), el("code", { class: "secret", text: t.token }),
    el("p", { text: "URL:" }), el("code", { class: "secret url", text: !queue ? `${base}/events${filter ? `?${filter}` : ""}` : `${base}/receive` }),
    ...Object.entries(snippets).flatMap(([lang, code]) => {
      const pre = el("pre", { class: "review snippet", "data-lang": lang, text: code });
      return [el("div", { class: "heading" }, el("h3", { text: lang }),
        el("button", { type: "button", class: "link", text: `Copy ${lang}`, onclick: () => navigator.clipboard?.writeText(code).then(() => toast("Copied."), () => toast("Select the text to copy it.")) })), pre];
    }));
}
