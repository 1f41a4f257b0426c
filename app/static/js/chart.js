// Bar charts drawn as inline SVG (no library), each with the same numbers in a visually
// hidden table for screen readers. `barChart` draws any grouped series; `chart` is the
// overview's jobs completed and failed per 30 s over the last 5 minutes.

import { h, s } from "./dom.js";

const W = 600, H = 180, PAD_L = 40, PAD_B = 26, PAD_T = 10, PAD_R = 8;

/**
 * One group of bars per slot, one bar per series.
 * - id: the SVG title's id (unique on the page); title: what the chart shows, read aloud
 * - slots: one label per slot, for the bars' tooltips and the table's first column
 * - series: [{name, cls, values}], `values` one number per slot; `cls` colours the bars
 * - ticks: [[slot index, text]] under the axis; an index equal to slots.length is the right edge
 * - fmt: a number as text (tooltips, table); axisFmt: on the axis (default fmt)
 * - integers: the values are counts, so the axis stops at whole numbers
 * - keys: the caption under the chart (nodes); tableCaption, slotHeader: the hidden table's
 */
export function barChart({ id, title, slots, series, ticks = [], fmt = String, axisFmt = fmt, integers = true, keys = [], tableCaption, slotHeader = "when" }) {
  const max = Math.max(0, ...series.flatMap((x) => x.values));
  const top = niceMax(max, integers);
  const plotW = W - PAD_L - PAD_R, plotH = H - PAD_T - PAD_B;
  const slot = plotW / slots.length;
  const gap = 2;
  const barW = Math.max(2, (slot * 0.8 - gap * (series.length - 1)) / series.length);
  const y = (v) => PAD_T + plotH - (v / top) * plotH;

  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-labelledby": id },
    s("title", { id }, title));
  for (const v of [0, top / 2, top]) {
    svg.append(s("line", { x1: PAD_L, x2: W - PAD_R, y1: y(v), y2: y(v), class: "grid" }));
    svg.append(s("text", { x: PAD_L - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" }, axisFmt(v)));
  }
  slots.forEach((label, i) => {
    const x0 = PAD_L + i * slot + (slot - series.length * barW - (series.length - 1) * gap) / 2;
    series.forEach((x, k) => {
      const v = x.values[i] || 0;
      svg.append(s("rect", { x: x0 + k * (barW + gap), y: y(v), width: barW, height: Math.max(0, y(0) - y(v)), class: `bar ${x.cls}` },
        s("title", {}, `${x.name}: ${fmt(v)}, ${label}`)));
    });
  });
  for (const [i, text] of ticks) {
    const anchor = i === 0 ? "start" : i === slots.length ? "end" : "middle";
    svg.append(s("text", { x: PAD_L + i * slot, y: H - 8, class: "axis", "text-anchor": anchor }, text));
  }

  // (in a hidden box: a table ignores the 1 px height the class gives, and would take space)
  const table = h("table", {},
    h("caption", {}, tableCaption || title),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, slotHeader), series.map((x) => h("th", { scope: "col" }, x.name)))),
    h("tbody", {}, slots.map((label, i) => h("tr", {}, h("td", {}, label), series.map((x) => h("td", {}, fmt(x.values[i] || 0)))))));

  return h("figure", { class: "chart-box" }, svg, h("figcaption", {}, keys), h("div", { class: "visually-hidden" }, table));
}

export function chart(buckets, { partial = false } = {}) {
  const total = buckets.reduce((a, b) => ({ completed: a.completed + b.completed, failed: a.failed + b.failed }), { completed: 0, failed: 0 });
  const n = buckets.length;
  return barChart({
    id: "chart-title",
    title: `Jobs completed (${total.completed}) and failed (${total.failed}) in the last 5 minutes, per 30 seconds`,
    slots: buckets.map((_, i) => `${(n - i) * 30 - 30}–${(n - i) * 30} s ago`),
    series: [
      { name: "completed", cls: "completed", values: buckets.map((b) => b.completed) },
      { name: "failed", cls: "failed", values: buckets.map((b) => b.failed) },
    ],
    ticks: [[0, "−5 min"], [n / 2, "−2.5 min"], [n, "now"]],
    keys: [
      h("span", { class: "key completed" }, `Completed: ${total.completed}`), " ",
      h("span", { class: "key failed" }, `Failed: ${total.failed}`),
      partial ? h("span", { class: "muted" }, " (at least: older finishes may not be loaded)") : null,
    ],
    tableCaption: "Jobs finished per 30 seconds",
    slotHeader: "from",
  });
}

/** The top of the axis: a round number at or above `v`; even for small integers, so the
 * middle line is a whole number too. */
export function niceMax(v, integers = true) {
  if (integers && v <= 4) return 4;
  if (integers && v <= 20) return Math.ceil(v / 2) * 2;
  if (v <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 4, 6, 8, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}
