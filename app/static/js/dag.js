// Draws a workflow's DAG as SVG, left to right, with no library: each step goes in the
// column after its deepest dependency (longest path from a root), and the steps of a
// column are ordered by the average row of their parents, then of their children (two
// sweeps of the barycentre heuristic), which keeps most edges short and uncrossed.
// Every node is a link to its job; its colour is its status (CSS classes), and a waiting
// node shows why it waits (an approval, a signal or a sleep shows what it waits for). The
// page draws it again when steps are added: a map step's
// children (`key[i]`, docs/map-steps.md) appear between its list's step and itself.

import { s } from "./dom.js";

const NODE_W = 184, NODE_H = 62, GAP_X = 64, GAP_Y = 22, PAD = 12;

export function layout(steps) {
  const byKey = new Map(steps.map((st) => [st.key, st]));
  const depth = new Map();
  const visiting = new Set();
  const depthOf = (key) => {
    if (depth.has(key)) return depth.get(key);
    if (visiting.has(key)) return 0; // a cycle cannot be submitted; stay safe anyway
    visiting.add(key);
    const parents = (byKey.get(key)?.depends_on || []).filter((p) => byKey.has(p));
    const d = parents.length ? 1 + Math.max(...parents.map(depthOf)) : 0;
    visiting.delete(key);
    depth.set(key, d);
    return d;
  };
  const columns = [];
  for (const st of steps) {
    const d = depthOf(st.key);
    (columns[d] ||= []).push(st.key);
  }
  const children = new Map(steps.map((st) => [st.key, []]));
  for (const st of steps) for (const p of st.depends_on || []) children.get(p)?.push(st.key);
  const row = new Map();
  const index = () => columns.forEach((col) => col.forEach((k, i) => row.set(k, i)));
  index();
  const bary = (keys) => (keys.length ? keys.reduce((a, k) => a + (row.get(k) ?? 0), 0) / keys.length : null);
  const sortBy = (col, f) => {
    const scored = col.map((k, i) => ({ k, v: f(k) ?? i }));
    scored.sort((a, b) => a.v - b.v);
    return scored.map((x) => x.k);
  };
  for (let pass = 0; pass < 2; pass++) {
    for (let c = 1; c < columns.length; c++) { columns[c] = sortBy(columns[c], (k) => bary(byKey.get(k).depends_on || [])); index(); }
    for (let c = columns.length - 2; c >= 0; c--) { columns[c] = sortBy(columns[c], (k) => bary(children.get(k))); index(); }
  }
  const tallest = Math.max(1, ...columns.map((c) => c.length));
  const height = PAD * 2 + tallest * NODE_H + (tallest - 1) * GAP_Y;
  const width = PAD * 2 + columns.length * NODE_W + Math.max(0, columns.length - 1) * GAP_X;
  const pos = new Map();
  columns.forEach((col, c) => {
    const colH = col.length * NODE_H + (col.length - 1) * GAP_Y;
    const top = (height - colH) / 2;
    col.forEach((k, i) => pos.set(k, { x: PAD + c * (NODE_W + GAP_X), y: top + i * (NODE_H + GAP_Y) }));
  });
  return { pos, width, height, children };
}

const clip = (text, n) => (text.length > n ? `${text.slice(0, n - 1)}…` : text);
// Every label starts 14 px in from the node's left edge and must end 10 px before its right.
const TEXT_W = NODE_W - 24;
const BUDGET = { "n-key": 20, "n-op": 24, "n-status": 29 };

/** Puts `full` in the SVG text `el`, cut with an ellipsis so that it ends inside its node.
 * Once the graph is on screen the cut is measured (getComputedTextLength); before that, a
 * character budget stands in, and the page calls update() again after it appends the graph.
 * A cut label gets a <title> child with the whole text: the hover tooltip. */
function fit(el, full) {
  el.textContent = full;
  let cut = full;
  if (el.isConnected && el.getComputedTextLength() > 0) {
    let width = el.getComputedTextLength();
    if (width > TEXT_W) {
      let n = Math.max(1, Math.floor((full.length * TEXT_W) / width));
      el.textContent = cut = `${full.slice(0, n).trimEnd()}…`;
      while (n > 1 && el.getComputedTextLength() > TEXT_W) {
        n -= 1;
        el.textContent = cut = `${full.slice(0, n).trimEnd()}…`;
      }
    }
  } else {
    cut = clip(full, BUDGET[el.getAttribute("class")] || 20);
    el.textContent = cut;
  }
  if (cut !== full) el.append(s("title", {}, full));
}

/** A short line for why a step waits, from its `why` (docs/workflows.md); the full
 * messages are in the node's tooltip and in the steps table. */
export function whyShort(step) {
  const r = (step.why?.reasons || [])[0];
  if (!r) return "";
  switch (r.reason) {
    case "dependencies": return r.waiting_for ? `waits for ${r.waiting_for.join(", ")}` : "waits for its parents";
    case "map_children": return `waits for ${r.waiting} of ${r.items} mapped`;
    case "paused": return "engine paused";
    case "engine_full": return r.limit ? `engine full (${r.running}/${r.limit})` : "engine full";
    case "position": return `${r.ahead} ahead in line`;
    case "scheduled": return r.seconds_left != null ? `${r.kind === "retry_backoff" ? "retry" : "runs"} in ${Math.ceil(r.seconds_left)} s` : "scheduled";
    case "approval": return "awaiting approval";
    case "signal": return `awaiting signal ${r.signal}`;
    case "sleeping": return r.seconds_left != null ? `wakes in ${Math.ceil(r.seconds_left)} s` : "sleeping";
    default: return r.message || r.reason;
  }
}

/** What a step does: its handler, or its type (an approval, a signal, a sleep). */
export function what(step) {
  return step.type && step.type !== "job" ? step.type : `${step.engine}.${step.operation}`;
}

/** Every reason a step waits, in full. */
export function whyText(step) {
  return (step.why?.reasons || []).map((r) => r.message || r.reason).join("; ");
}

/** The SVG of a DAG; returns {svg, update(step)} to recolour a node in place. */
export function drawDag(steps, { label = "Workflow steps" } = {}) {
  const { pos, width, height } = layout(steps);
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, width, height, class: "dag", role: "group", "aria-label": label });
  svg.append(s("defs", {}, s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" },
    s("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrow" }))));
  const edges = s("g", { class: "edges", "aria-hidden": "true" });
  svg.append(edges);
  for (const st of steps) {
    const b = pos.get(st.key);
    for (const p of st.depends_on || []) {
      const a = pos.get(p);
      if (!a) continue;
      const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2;
      const mx = (x1 + x2) / 2;
      edges.append(s("path", { d: `M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2 - 1} ${y2}`, class: "edge", "data-from": p, "data-to": st.key, "marker-end": "url(#arrow)" }));
    }
  }
  const nodes = new Map();
  for (const st of steps) {
    const { x, y } = pos.get(st.key);
    const title = s("title");
    const keyText = s("text", { x: x + 14, y: y + 19, class: "n-key" });
    const opText = s("text", { x: x + 14, y: y + 35, class: "n-op" });
    const statusText = s("text", { x: x + 14, y: y + 52, class: "n-status" });
    const a = s("a", { href: `#/jobs/${st.job_id}`, class: "node", "data-key": st.key, "data-job": st.job_id },
      title,
      s("rect", { x, y, width: NODE_W, height: NODE_H, rx: 8, ry: 8 }),
      s("rect", { x, y, width: 6, height: NODE_H, rx: 3, class: "stripe" }),
      keyText, opText, statusText);
    nodes.set(st.key, { a, title, keyText, opText, statusText, step: st });
    svg.append(a);
  }
  function update(st) {
    const n = nodes.get(st.key);
    if (!n) return;
    n.step = { ...n.step, ...st };
    const waiting = !["running", "completed", "failed", "cancelled"].includes(n.step.status);
    const why = waiting ? whyShort(n.step) : "";
    const whyFull = waiting ? whyText(n.step) : "";
    n.a.setAttribute("class", `node st-${n.step.status}`);
    n.a.dataset.status = n.step.status;
    const pct = n.step.status === "running" && n.step.progress ? ` ${Math.round(n.step.progress)}%` : "";
    const line = why ? `${n.step.status} · ${why}` : `${n.step.status}${pct}`;
    fit(n.keyText, n.step.key);
    fit(n.opText, what(n.step));
    fit(n.statusText, line);
    const more = whyFull && whyFull !== why ? `; ${whyFull}` : "";
    const full = `${n.step.key} (${what(n.step)}): ${line}${more}`;
    n.title.textContent = full;
    n.a.setAttribute("aria-label", `Step ${full}. Open its job.`);
  }
  for (const st of steps) update(st);
  return { svg, update, nodes };
}
