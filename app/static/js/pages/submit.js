// Submit a workflow (POST /api/v1/jobs/workflows) or a single job (POST /api/v1/jobs/submit)
// from a JSON editor. A JSON syntax error, or the API's 422 (`{"error": {code, message,
// field}}`), is marked on the line of the field it names, with the message beside it.

import { post, explain } from "../api.js";
import { h, clear, fill, notice } from "../dom.js";
import { locate, spotFor, lineOf } from "../jsonpos.js";

const EXAMPLES = {
  workflow: {
    name: "article",
    failure_policy: "fail_fast",
    jobs: [
      { key: "draft", engine: "text_intelligence", operation: "analyze", parameters: { text: "Switchyard runs jobs. Workflows are DAGs of them." } },
      { key: "summary", engine: "text_intelligence", operation: "summarize", depends_on: ["draft"], parameters: { text: "Switchyard runs jobs. Workflows are DAGs of them. Steps wait for their parents.", sentences: 1 } },
      { key: "image", engine: "image_generation", operation: "render", parameters: { width: 640, height: 360, kind: "gradient" } },
      { key: "wait", engine: "general", operation: "sleep", depends_on: ["image"], parameters: { seconds: 2, steps: 4 } },
      { key: "report", engine: "general", operation: "echo", depends_on: ["summary", "wait"], parameters: { done: true } },
    ],
  },
  job: { engine: "general", operation: "echo", name: "hello", priority: 5, parameters: { hello: "world" } },
};

let draft = null; // kept while the tab lives, so leaving the page loses nothing

export async function render(ctx) {
  ctx.title("Submit");
  const ta = h("textarea", {
    id: "editor", name: "document", spellcheck: "false", autocapitalize: "off", autocomplete: "off", wrap: "off",
    rows: "24", "aria-describedby": "editor-help editor-errors",
  });
  ta.value = draft ?? pretty(EXAMPLES.workflow);
  const marks = h("div", { class: "marks", "aria-hidden": "true" });
  const errors = h("ul", { id: "editor-errors", class: "editor-errors", "aria-live": "assertive" });
  const done = notice("info");
  const submit = h("button", { type: "submit", class: "primary" }, "Submit");
  const kind = h("select", { id: "example" },
    h("option", { value: "workflow" }, "a workflow (5 steps)"), h("option", { value: "job" }, "a single job"));
  const form = h("form", { class: "submit-form", "aria-labelledby": "submit-h", novalidate: true },
    h("div", { class: "editor-head" },
      h("label", { for: "editor" }, "Workflow or job (JSON)"),
      h("div", { class: "editor-tools" },
        h("label", { for: "example", class: "inline" }, "Example:"), kind,
        h("button", { type: "button", class: "small", onclick: () => { ta.value = pretty(EXAMPLES[kind.value]); changed(); ta.focus(); } }, "Use example"),
        h("button", { type: "button", class: "small", onclick: format }, "Format"))),
    h("div", { class: "editor" }, ta, marks),
    h("p", { id: "editor-help", class: "help" },
      "A document with ", h("code", {}, "jobs"), " is a workflow (each step: ", h("code", {}, "key"), ", ", h("code", {}, "engine"), ", ",
      h("code", {}, "operation"), ", ", h("code", {}, "parameters"), ", ", h("code", {}, "depends_on"),
      "); one with ", h("code", {}, "engine"), " and ", h("code", {}, "operation"), " is a single job. See docs/workflows.md."),
    errors,
    h("div", { class: "actions" }, submit),
    done);
  ctx.main.append(h("h1", { id: "submit-h" }, "Submit a workflow"), form);

  let problems = []; // [{path, start, end, message}]

  function changed() {
    draft = ta.value;
    if (problems.length) { problems = []; drawMarks(); clear(errors); ta.removeAttribute("aria-invalid"); }
  }
  ta.addEventListener("input", changed);
  ta.addEventListener("scroll", drawMarks);
  ctx.on(window, "resize", drawMarks);
  ta.addEventListener("keydown", (e) => { // Tab indents; Escape then Tab leaves the editor
    if (e.key === "Tab" && !e.shiftKey && !ta.dataset.escaped) {
      e.preventDefault();
      ta.setRangeText("  ", ta.selectionStart, ta.selectionEnd, "end");
      changed();
    }
    if (e.key === "Escape") ta.dataset.escaped = "1";
  });
  ta.addEventListener("blur", () => delete ta.dataset.escaped);

  function format() {
    try { ta.value = pretty(JSON.parse(ta.value)); changed(); } catch (e) { show([syntaxProblem(e)]); }
  }

  function syntaxProblem(e) {
    const m = /position (\d+)/.exec(e.message);
    const pos = m ? Number(m[1]) : ta.value.length;
    return { start: pos, end: Math.min(ta.value.length, pos + 1), message: `Not valid JSON: ${e.message}` };
  }

  function show(list) {
    problems = list;
    fill(errors, ...list.map((p) => {
      const line = lineOf(ta.value, p.start);
      return h("li", {}, h("button", {
        type: "button", class: "link-button", onclick: () => { ta.focus(); ta.setSelectionRange(p.start, p.end); scrollTo(line); },
      }, `Line ${line}`), p.field ? [": ", h("code", {}, p.field)] : null, ` ${p.message}`);
    }));
    ta.setAttribute("aria-invalid", list.length ? "true" : "false");
    if (list.length) scrollTo(lineOf(ta.value, list[0].start));
    drawMarks();
  }

  function metrics() {
    const cs = getComputedStyle(ta);
    return { lh: parseFloat(cs.lineHeight), top: parseFloat(cs.paddingTop) + parseFloat(cs.borderTopWidth) };
  }

  function scrollTo(line) {
    const { lh } = metrics();
    const y = (line - 1) * lh;
    if (y < ta.scrollTop || y > ta.scrollTop + ta.clientHeight - 2 * lh) ta.scrollTop = Math.max(0, y - ta.clientHeight / 3);
    drawMarks();
  }

  function drawMarks() {
    clear(marks);
    const { lh, top } = metrics();
    const seen = new Set();
    for (const p of problems) {
      const line = lineOf(ta.value, p.start);
      if (seen.has(line)) continue;
      seen.add(line);
      const y = top + (line - 1) * lh - ta.scrollTop;
      if (y < 0 || y > ta.clientHeight) continue;
      const band = h("div", { class: "mark" });
      band.style.top = `${y}px`;
      band.style.height = `${lh}px`;
      const bubble = h("div", { class: "mark-msg" }, p.message);
      bubble.style.top = `${y + lh}px`;
      marks.append(band, bubble);
    }
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    done.show("");
    let doc;
    try { doc = JSON.parse(ta.value); } catch (err) { show([syntaxProblem(err)]); ta.focus(); return; }
    if (!doc || typeof doc !== "object" || Array.isArray(doc)) { show([{ start: 0, end: 1, message: "The document is a JSON object: a workflow or a job." }]); return; }
    const isWorkflow = "jobs" in doc || !("engine" in doc);
    submit.disabled = true;
    submit.textContent = "Submitting…";
    try {
      const out = await post(isWorkflow ? "/jobs/workflows" : "/jobs/submit", doc);
      show([]);
      const href = isWorkflow ? `#/workflows/${out.id}` : `#/jobs/${out.id}`;
      done.show(`Submitted ${isWorkflow ? "workflow" : "job"} ${out.id}.`, "info");
      location.hash = href;
    } catch (err) {
      if (err.status === 422 || err.status === 400 || err.status === 409) {
        const spots = locate(ta.value);
        const list = (err.errors && err.errors.length ? err.errors.map((x) => ({ field: x.field, message: x.reason }))
          : [{ field: err.field, message: err.message }]);
        show(list.map((x) => {
          let spot = spotFor(spots, x.field);
          if ((!spot || spot.path === "jobs") && err.details?.key) spot = keySpot(spots, doc, err.details.key) || spot;
          if ((!spot || spot.path === "jobs") && err.details?.cycle) spot = keySpot(spots, doc, err.details.cycle[0]) || spot;
          if (spot && err.details?.unknown && spot.path.endsWith("depends_on")) { // the very entry that names no step
            const deps = valueAt(doc, spot.path);
            const k = Array.isArray(deps) ? deps.indexOf(err.details.unknown) : -1;
            if (k >= 0) spot = spotFor(spots, `${spot.path}.${k}`) || spot;
          }
          const at = spot ? (spot.keyStart ?? spot.start) : 0;
          const end = spot ? spot.end : 1;
          return { field: x.field, message: x.message.startsWith(`${x.field}:`) ? x.message.slice(x.field.length + 1).trim() : x.message, start: at, end };
        }));
      } else {
        show([]);
        done.show(`Not submitted: ${explain(err)}`, "error");
      }
    } finally {
      submit.disabled = false;
      submit.textContent = "Submit";
    }
  });
}

function valueAt(doc, path) {
  return path.split(".").reduce((v, k) => (v === null || v === undefined ? undefined : v[k]), doc);
}

function keySpot(spots, doc, key) {
  const i = (doc.jobs || []).findIndex((j) => j && j.key === key);
  return i < 0 ? null : spotFor(spots, `jobs.${i}.key`);
}

/** JSON with two-space indents, short values on one line: a step's `depends_on` or
 * `parameters` stay on the line of their key. */
function pretty(v, depth = 0, indent = "") {
  const one = inline(v);
  if (!v || typeof v !== "object" || (depth >= 2 && indent.length + one.length <= 88)) return one;
  const inner = `${indent}  `;
  const items = Array.isArray(v)
    ? v.map((x) => inner + pretty(x, depth + 1, inner))
    : Object.entries(v).map(([k, x]) => `${inner}${JSON.stringify(k)}: ${pretty(x, depth + 1, inner)}`);
  if (!items.length) return one;
  const [open, close] = Array.isArray(v) ? ["[", "]"] : ["{", "}"];
  return `${open}\n${items.join(",\n")}\n${indent}${close}`;
}

function inline(v) {
  if (Array.isArray(v)) return `[${v.map(inline).join(", ")}]`;
  if (v && typeof v === "object") return `{${Object.entries(v).map(([k, x]) => `${JSON.stringify(k)}: ${inline(x)}`).join(", ")}}`;
  return JSON.stringify(v) ?? "null";
}
