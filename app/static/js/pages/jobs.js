// Jobs list: GET /api/v1/jobs/?status=&engine=&workflow_id=&cursor=&limit= (newest first),
// with "Load more" for the next page. The text filter runs in the browser, over the jobs
// loaded so far (the API has no text search). Status and progress of the rows change with
// the WebSocket's events; jobs created after the page loaded are added at the top when
// they match the filters.

import { get, qs, explain } from "../api.js";
import { h, clear, fill, notice, timeEl, statusBadge, progressBar, setProgress, shortId, JOB_STATUSES } from "../dom.js";

const PAGE = 50;

export async function render(ctx) {
  ctx.title("Jobs");
  const q = ctx.query;
  const filters = { status: q.get("status") || "", engine: q.get("engine") || "", workflow_id: q.get("workflow_id") || "" };
  let text = q.get("q") || "";

  const err = notice();
  const statusSel = h("select", { id: "f-status", name: "status" },
    h("option", { value: "" }, "any"), JOB_STATUSES.map((s) => h("option", { value: s, selected: s === filters.status }, s)));
  const engineSel = h("select", { id: "f-engine", name: "engine" }, h("option", { value: "" }, "any"));
  const wfIn = h("input", { id: "f-workflow", name: "workflow_id", value: filters.workflow_id, pattern: "[0-9a-f]{24}",
    placeholder: "24-character id", autocomplete: "off", spellcheck: "false", size: "26" });
  const textIn = h("input", { id: "f-text", type: "search", value: text, placeholder: "name, id, operation, error…", autocomplete: "off" });
  const form = h("form", { class: "filters", role: "search", "aria-label": "Filter jobs" },
    h("div", { class: "field" }, h("label", { for: "f-status" }, "Status"), statusSel),
    h("div", { class: "field" }, h("label", { for: "f-engine" }, "Engine"), engineSel),
    h("div", { class: "field" }, h("label", { for: "f-workflow" }, "Workflow"), wfIn),
    h("div", { class: "field grow" }, h("label", { for: "f-text" }, "Text (in loaded jobs)"), textIn),
    h("div", { class: "field" }, h("button", { type: "submit" }, "Apply")));
  const count = h("p", { class: "muted", role: "status" });
  const tbody = h("tbody");
  const more = h("button", { type: "button", hidden: true }, "Load more");
  ctx.main.append(
    h("h1", {}, "Jobs"), form, err,
    h("div", { class: "table-wrap" }, h("table", { class: "jobs" },
      h("caption", { class: "visually-hidden" }, "Jobs, newest first"),
      h("thead", {}, h("tr", {},
        h("th", { scope: "col" }, "Job"), h("th", { scope: "col" }, "Status"), h("th", { scope: "col" }, "Progress"),
        h("th", { scope: "col", class: "wide" }, "Engine"), h("th", { scope: "col", class: "wide num" }, "Attempt"),
        h("th", { scope: "col", class: "wide" }, "Workflow"), h("th", { scope: "col" }, "Created"))),
      tbody)),
    count, more);

  get("/jobs/queue/status").then((d) => {
    const names = new Set(d.queues.map((x) => x.name));
    if (filters.engine) names.add(filters.engine);
    engineSel.append(...[...names].sort().map((n) => h("option", { value: n, selected: n === filters.engine }, n)));
  }).catch(() => { if (filters.engine) engineSel.append(h("option", { value: filters.engine, selected: true }, filters.engine)); });

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (wfIn.value && !/^[0-9a-f]{24}$/.test(wfIn.value.trim())) {
      err.show("A workflow id is 24 hexadecimal characters.");
      wfIn.setAttribute("aria-invalid", "true");
      wfIn.focus();
      return;
    }
    location.hash = `#/jobs${qs({ status: statusSel.value, engine: engineSel.value, workflow_id: wfIn.value.trim(), q: textIn.value.trim() })}`;
  });
  for (const sel of [statusSel, engineSel]) sel.addEventListener("change", () => form.requestSubmit());
  textIn.addEventListener("input", () => {
    text = textIn.value.trim();
    history.replaceState(null, "", `#/jobs${qs({ ...filters, q: text })}`);
    applyText();
  });

  const rows = new Map(); // job id -> {tr, job, status, progress}
  let cursor = null;

  function matches(job) {
    return (!filters.status || job.status === filters.status) && (!filters.engine || job.engine === filters.engine)
      && (!filters.workflow_id || job.workflow_id === filters.workflow_id);
  }

  function haystack(job) {
    const e = job.last_error || {};
    return [job.id, job.name, job.engine, job.operation, job.step_key, job.workflow_id, job.status, e.code, e.message]
      .filter(Boolean).join(" ").toLowerCase();
  }

  function applyText() {
    const needle = text.toLowerCase();
    let shown = 0;
    for (const r of rows.values()) {
      r.tr.hidden = Boolean(needle) && !haystack(r.job).includes(needle);
      if (!r.tr.hidden) shown += 1;
    }
    count.textContent = needle ? `${shown} of ${rows.size} loaded jobs match “${text}”.` : `${rows.size} jobs loaded.`;
  }

  function makeRow(job) {
    const status = h("td", {}, statusBadge(job.status));
    const progress = h("td", {}, progressBar(job.progress?.percent, job.status, `progress of ${job.name || job.id}`));
    const attempt = h("td", { class: "wide num" }, String(job.attempt ?? 0));
    const label = job.name || `${job.engine}.${job.operation}`;
    const tr = h("tr", { "data-job": job.id, "data-status": job.status },
      h("th", { scope: "row" }, h("a", { href: `#/jobs/${job.id}` }, label), h("div", { class: "muted small" }, shortId(job.id))),
      status, progress,
      h("td", { class: "wide" }, `${job.engine}.${job.operation}`),
      attempt,
      h("td", { class: "wide" }, job.workflow_id ? h("a", { href: `#/workflows/${job.workflow_id}` }, job.step_key || shortId(job.workflow_id)) : h("span", { class: "muted" }, "—")),
      h("td", {}, timeEl(job.created_at)));
    return { tr, job, status, progress, attempt };
  }

  async function load(next) {
    more.disabled = true;
    try {
      const page = await get(`/jobs/${qs({ ...filters, cursor: next, limit: PAGE })}`);
      if (ctx.signal.aborted) return;
      err.show("");
      if (!next) { clear(tbody); rows.clear(); }
      for (const job of page.jobs) {
        if (rows.has(job.id)) continue;
        const r = makeRow(job);
        rows.set(job.id, r);
        tbody.append(r.tr);
      }
      cursor = page.next_cursor;
      more.hidden = !cursor;
      if (!rows.size) tbody.append(h("tr", { class: "empty" }, h("td", { colspan: "7", class: "muted" }, "No jobs match these filters.")));
      applyText();
    } catch (e) {
      if (!ctx.signal.aborted) err.show(`Could not load jobs: ${explain(e)}`);
    } finally {
      more.disabled = false;
    }
  }
  more.addEventListener("click", () => load(cursor));

  ctx.on(ctx.app.live, "event", (ev) => {
    const e = ev.detail;
    if (e.kind !== "job" || !e.job_id) return;
    let r = rows.get(e.job_id);
    if (!r) {
      if (e.type === "job.progress") return;
      const job = { id: e.job_id, name: e.name, engine: e.engine, operation: e.operation, status: e.status,
        workflow_id: e.workflow_id, step_key: e.step_key, created_at: e.at, attempt: 0, progress: e.progress || { percent: 0 } };
      // A job we have not listed: new since the page loaded (created now), and wanted here.
      if (!["job.pending", "job.queued", "job.scheduled"].includes(e.type) || !matches(job)) return;
      tbody.querySelector("tr.empty")?.remove();
      r = makeRow(job);
      rows.set(job.id, r);
      tbody.prepend(r.tr);
      applyText();
      return;
    }
    const job = r.job;
    if (e.type === "job.progress") {
      job.progress = e.progress || job.progress;
    } else {
      job.status = e.status;
      if (e.status === "running") job.attempt = (job.attempt || 0) + 1;
      if (e.error) job.last_error = e.error;
      fill(r.status, statusBadge(job.status));
      r.tr.dataset.status = job.status;
      r.attempt.textContent = String(job.attempt);
    }
    setProgress(r.progress.firstChild, job.progress?.percent, job.status);
  });
  ctx.on(ctx.app.live, "resync", () => load(null));

  await load(null);
}
