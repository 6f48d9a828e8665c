// The pipeline page's charts (uPlot, loaded by index.html as a global): one per sink,
// records behind and records per second over the last hour.

import { el } from "./dom.js";

const pad = (n) => String(n).padStart(2, "0");

/// A time in seconds since the epoch as a local clock time, with seconds when asked.
function clock(secs, withSeconds) {
  const d = new Date(secs * 1000);
  const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  return withSeconds ? `${hm}:${pad(d.getSeconds())}` : hm;
}

/// The time axis's steps, in seconds: never a fraction of one.
const STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600];
/// The least span the time axis shows, in seconds, so a few samples are not stretched
/// over the whole width.
const MIN_SPAN = 60;

/// One chart per sink: records behind and records per second over the last hour, from
/// the server's history, then extended by each live update. Only the pipeline's sinks
/// now are shown (the history also holds those removed since).
export function sinkCharts(box) {
  const charts = new Map();
  let current = null;
  const css = getComputedStyle(document.documentElement);
  const color = (v) => css.getPropertyValue(v).trim();
  const HOUR = 3600;
  const make = (name) => {
    const caption = el("figcaption", { class: "muted" });
    const area = el("div", { class: "chart-area" });
    const fig = el("figure", { class: "chart", "aria-label": `Lag and throughput of sink ${name} over the last hour` }, el("h3", { text: name }), area, caption);
    box.append(fig);
    const data = [[], [], []];
    const plot = new uPlot({
      // The figure's inner width, so that the right-hand axis is not cut off.
      width: Math.max(240, Math.min(area.clientWidth || 600, 1100)),
      height: 200,
      // From the first sample to the last, at least MIN_SPAN wide, ending at the last.
      scales: { x: { time: true, range: (u) => {
        const xs = u.data[0];
        const hi = xs.length ? xs[xs.length - 1] : Date.now() / 1000;
        return [Math.min(xs.length ? xs[0] : hi, hi - MIN_SPAN), hi];
      } } },
      series: [{ label: "time", value: (u, v) => (v === null || v === undefined ? "–" : clock(v, true)) },
        { label: "records behind", stroke: color("--accent"), scale: "lag", width: 2 },
        { label: "records/s", stroke: color("--ok"), scale: "rate", width: 2 }],
      axes: [{
        stroke: color("--muted"),
        incrs: STEPS,
        // Seconds only while the shown span is under ten minutes.
        values: (u, splits) => {
          const span = u.scales.x.max - u.scales.x.min;
          return splits.map((v) => clock(v, span < 600));
        },
      }, { scale: "lag", stroke: color("--muted") },
      { scale: "rate", side: 1, stroke: color("--muted"), grid: { show: false } }],
    }, data, area);
    const c = { plot, data, caption, figure: fig };
    charts.set(name, c);
    return c;
  };
  const add = (name, t, lag, rate) => {
    if (current && !current.has(name)) return;
    const c = charts.get(name) || make(name);
    const [xs, ls, rs] = c.data;
    if (xs.length && t <= xs[xs.length - 1]) return;
    xs.push(t); ls.push(lag); rs.push(rate);
    while (xs.length && xs[0] < t - HOUR) { xs.shift(); ls.shift(); rs.shift(); }
    c.plot.setData(c.data);
    c.caption.textContent = `Now (${clock(t, true)}): ${lag} records behind, ${rate.toFixed(1)} records/s.`;
  };
  return {
    /// The pipeline's sinks now, by name: the charts of others go.
    only(names) {
      current = new Set(names);
      for (const [name, c] of charts) {
        if (current.has(name)) continue;
        c.plot.destroy();
        c.figure.remove();
        charts.delete(name);
      }
    },
    history(h) { for (const s of h.samples) for (const [name, [lag, rate]] of Object.entries(s.sinks)) add(name, s.time_ms / 1000, lag, rate); },
    live(status) { const t = Date.now() / 1000; for (const k of status?.sinks || []) add(k.name, t, k.lag_records, k.per_second); },
  };
}
