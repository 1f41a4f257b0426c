// Small DOM helpers. Everything the server sends is put on the page as text (textContent,
// attributes), never parsed as HTML, so a job name or an error message cannot inject markup.

const SVG_NS = "http://www.w3.org/2000/svg";

function build(el, props, children) {
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.setAttribute("class", v);
    else if (k === "text") el.textContent = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "value" && "value" in el) el.value = v;
    else if (k === "checked" || k === "disabled" || k === "selected" || k === "hidden") el[k] = Boolean(v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of [].concat(children ?? [])) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** h("a", {href: "#/", class: "x"}, ["text", child]) */
export function h(tag, props, ...children) {
  return build(document.createElement(tag), props, children);
}

/** The same for SVG elements. */
export function s(tag, props, ...children) {
  return build(document.createElementNS(SVG_NS, tag), props, children);
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

/** Times from the API carry their zone ("+00:00"); a bare one is read as UTC. */
export function parseTime(v) {
  if (!v) return null;
  if (typeof v === "number") return v;
  const str = /[zZ]|[+-]\d\d:?\d\d$/.test(v) ? v : v + "Z";
  const t = Date.parse(str);
  return Number.isNaN(t) ? null : t;
}

const dateFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });

export function fmtTime(v) {
  const t = parseTime(v);
  return t === null ? "—" : dateFmt.format(t);
}

export function fmtClock(v) {
  const t = parseTime(v);
  if (t === null) return "—";
  const ms = String(Math.floor(t % 1000)).padStart(3, "0");
  return `${timeFmt.format(t)}.${ms}`;
}

export function fmtAgo(v, now = Date.now()) {
  const t = parseTime(v);
  if (t === null) return "—";
  const d = Math.round((now - t) / 1000);
  if (Math.abs(d) < 2) return "just now";
  const abs = Math.abs(d);
  const [n, u] = abs < 90 ? [abs, "s"] : abs < 5400 ? [Math.round(abs / 60), "min"] : abs < 129600 ? [Math.round(abs / 3600), "h"] : [Math.round(abs / 86400), "d"];
  return d >= 0 ? `${n} ${u} ago` : `in ${n} ${u}`;
}

/** A <time> element: relative text, the exact time as its tooltip. */
export function timeEl(v) {
  const t = parseTime(v);
  if (t === null) return h("span", { class: "muted" }, "—");
  return h("time", { datetime: new Date(t).toISOString(), title: fmtTime(t) }, fmtAgo(t));
}

export function fmtDuration(ms) {
  if (ms === null || ms === undefined) return "—";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  const m = Math.floor(ms / 60000);
  return `${m} min ${Math.round((ms % 60000) / 1000)} s`;
}

export const TERMINAL = new Set(["completed", "failed", "cancelled"]);
export const JOB_STATUSES = ["pending", "scheduled", "queued", "awaiting", "running", "completed", "failed", "cancelled"];

export function statusBadge(status) {
  return h("span", { class: `badge st-${status}`, "data-status": status }, status);
}

/** A native <progress> (announced by screen readers), with the number beside it. */
export function progressBar(percent, status, label) {
  const p = status === "completed" ? 100 : Math.max(0, Math.min(100, Number(percent) || 0));
  return h("span", { class: `progress st-${status}` },
    h("progress", { max: "100", value: String(p), "aria-label": label || "progress" }),
    h("span", { class: "pct" }, `${Math.round(p)}%`));
}

export function setProgress(wrap, percent, status) {
  if (!wrap) return;
  const p = status === "completed" ? 100 : Math.max(0, Math.min(100, Number(percent) || 0));
  wrap.className = `progress st-${status}`;
  wrap.querySelector("progress").value = p;
  wrap.querySelector(".pct").textContent = `${Math.round(p)}%`;
}

export function pre(value) {
  return h("pre", { class: "json", tabindex: "0" }, value === undefined ? "—" : JSON.stringify(value, null, 2));
}

/** Calls `fn` at most once per `ms`, after the last call (trailing). */
export function debounce(fn, ms) {
  let timer = null;
  const d = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => { timer = null; fn(...args); }, ms);
  };
  d.cancel = () => clearTimeout(timer);
  return d;
}

/** Calls `fn` at most every `ms` while triggered: the first call at once, the rest batched. */
export function throttle(fn, ms) {
  let timer = null, pending = false;
  const t = () => {
    if (timer) { pending = true; return; }
    fn();
    timer = setTimeout(function tick() {
      if (pending) { pending = false; fn(); timer = setTimeout(tick, ms); } else timer = null;
    }, ms);
  };
  t.cancel = () => { clearTimeout(timer); timer = null; pending = false; };
  return t;
}

/** An alert region for a page or a form: `show(message, kind)`. */
export function notice(kind = "error") {
  const el = h("div", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status", hidden: true });
  el.show = (msg, k = kind) => {
    el.className = `notice ${k}`;
    el.textContent = msg;
    el.hidden = !msg;
  };
  return el;
}

export function shortId(id) {
  return id ? `${id.slice(0, 6)}…${id.slice(-4)}` : "—";
}

/** Replaces the children of `el` (nulls and falses skipped, arrays flattened). */
export function fill(el, ...children) {
  clear(el);
  append(el, children);
  return el;
}
