// The overview's chart: completed and failed jobs per 30 s over the last 5 minutes, drawn
// as inline SVG (no library). The same numbers are in a visually hidden table for screen
// readers.

import { h, s } from "./dom.js";

const W = 600, H = 180, PAD_L = 34, PAD_B = 26, PAD_T = 10, PAD_R = 8;

export function chart(buckets, { partial = false } = {}) {
  const max = Math.max(1, ...buckets.map((b) => Math.max(b.completed, b.failed)));
  const top = niceMax(max);
  const plotW = W - PAD_L - PAD_R, plotH = H - PAD_T - PAD_B;
  const slot = plotW / buckets.length;
  const barW = Math.max(2, slot / 2 - 4);
  const y = (v) => PAD_T + plotH - (v / top) * plotH;
  const total = buckets.reduce((a, b) => ({ completed: a.completed + b.completed, failed: a.failed + b.failed }), { completed: 0, failed: 0 });

  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-labelledby": "chart-title" },
    s("title", { id: "chart-title" }, `Jobs completed (${total.completed}) and failed (${total.failed}) in the last 5 minutes, per 30 seconds`));
  for (const v of [0, top / 2, top]) {
    svg.append(s("line", { x1: PAD_L, x2: W - PAD_R, y1: y(v), y2: y(v), class: "grid" }));
    svg.append(s("text", { x: PAD_L - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" }, String(Math.round(v))));
  }
  buckets.forEach((b, i) => {
    const x0 = PAD_L + i * slot + (slot - 2 * barW - 2) / 2;
    const when = `${(buckets.length - i) * 30 - 30}–${(buckets.length - i) * 30} s ago`;
    svg.append(s("rect", { x: x0, y: y(b.completed), width: barW, height: Math.max(0, y(0) - y(b.completed)), class: "bar completed" },
      s("title", {}, `${b.completed} completed, ${when}`)));
    svg.append(s("rect", { x: x0 + barW + 2, y: y(b.failed), width: barW, height: Math.max(0, y(0) - y(b.failed)), class: "bar failed" },
      s("title", {}, `${b.failed} failed, ${when}`)));
  });
  for (const [i, label] of [[0, "−5 min"], [buckets.length / 2, "−2.5 min"], [buckets.length, "now"]]) {
    svg.append(s("text", { x: PAD_L + i * slot, y: H - 8, class: "axis", "text-anchor": i === 0 ? "start" : i === buckets.length ? "end" : "middle" }, label));
  }

  const table = h("table", { class: "visually-hidden" },
    h("caption", {}, "Jobs finished per 30 seconds"),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "from"), h("th", { scope: "col" }, "completed"), h("th", { scope: "col" }, "failed"))),
    h("tbody", {}, buckets.map((b, i) => h("tr", {}, h("td", {}, `${(buckets.length - i) * 30} s ago`), h("td", {}, b.completed), h("td", {}, b.failed)))));

  return h("figure", { class: "chart-box" },
    svg,
    h("figcaption", {},
      h("span", { class: "key completed" }, `Completed: ${total.completed}`), " ",
      h("span", { class: "key failed" }, `Failed: ${total.failed}`),
      partial ? h("span", { class: "muted" }, " (at least: older finishes may not be loaded)") : null),
    table);
}

function niceMax(v) {
  if (v <= 4) return 4;
  if (v <= 20) return Math.ceil(v / 2) * 2; // even: the middle line is a whole number
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 4, 6, 8, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}
