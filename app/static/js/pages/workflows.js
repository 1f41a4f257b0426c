// Workflows list: GET /api/v1/jobs/workflows?status=&cursor=&limit= (newest first), with
// "Load more". Re-read (at most once a second) when an event of a listed workflow, or a
// new workflow, arrives over the WebSocket.

import { get, qs, explain } from "../api.js";
import { h, clear, fill, notice, throttle, timeEl, statusBadge, progressBar, shortId } from "../dom.js";

const PAGE = 50;

export async function render(ctx) {
  ctx.title("Workflows");
  const status = ctx.query.get("status") || "";
  const err = notice();
  const sel = h("select", { id: "wf-status" }, h("option", { value: "" }, "any"),
    ["running", "completed", "failed", "cancelled"].map((s) => h("option", { value: s, selected: s === status }, s)));
  sel.addEventListener("change", () => { location.hash = `#/workflows${qs({ status: sel.value })}`; });
  const tbody = h("tbody");
  const more = h("button", { type: "button", hidden: true }, "Load more");
  ctx.main.append(
    h("div", { class: "page-head" }, h("h1", {}, "Workflows"), h("a", { href: "#/submit", class: "button primary" }, "Submit a workflow")),
    h("form", { class: "filters", role: "search", "aria-label": "Filter workflows", onsubmit: (e) => e.preventDefault() },
      h("div", { class: "field" }, h("label", { for: "wf-status" }, "Status"), sel)),
    err,
    h("div", { class: "table-wrap" }, h("table", { class: "workflows" },
      h("caption", { class: "visually-hidden" }, "Workflows, newest first"),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Workflow"), h("th", { scope: "col" }, "Status"),
        h("th", { scope: "col" }, "Progress"), h("th", { scope: "col", class: "wide" }, "Steps"),
        h("th", { scope: "col" }, "Created"), h("th", { scope: "col", class: "wide" }, "Finished"))),
      tbody)),
    more);

  let loaded = []; // workflows shown, in order
  let cursor = null;

  function row(w) {
    const c = w.counts || {};
    return h("tr", { "data-workflow": w.id, "data-status": w.status },
      h("th", { scope: "row" }, h("a", { href: `#/workflows/${w.id}` }, w.name), h("div", { class: "muted small" }, shortId(w.id))),
      h("td", {}, statusBadge(w.status)),
      h("td", {}, progressBar(w.progress, w.status, `progress of ${w.name}`)),
      h("td", { class: "wide" }, `${c.completed ?? 0} done, ${c.failed ?? 0} failed, ${c.cancelled ?? 0} cancelled of ${w.total}`),
      h("td", {}, timeEl(w.created_at)),
      h("td", { class: "wide" }, timeEl(w.completed_at)));
  }

  function draw() {
    fill(tbody, ...(loaded.length ? loaded.map(row) : [h("tr", {}, h("td", { colspan: "6", class: "muted" }, "No workflows yet."))]));
  }

  async function load(next) {
    try {
      const page = await get(`/jobs/workflows${qs({ status, cursor: next, limit: PAGE })}`);
      if (ctx.signal.aborted) return;
      err.show("");
      loaded = next ? loaded.concat(page.workflows) : page.workflows;
      cursor = page.next_cursor;
      more.hidden = !cursor;
      draw();
    } catch (e) {
      if (!ctx.signal.aborted) err.show(`Could not load workflows: ${explain(e)}`);
    }
  }

  // Re-read what is shown (as many as are loaded) when something about it changes.
  const refresh = throttle(async () => {
    try {
      const page = await get(`/jobs/workflows${qs({ status, limit: Math.max(PAGE, Math.min(200, loaded.length)) })}`);
      if (ctx.signal.aborted) return;
      const fresh = new Map(page.workflows.map((w) => [w.id, w]));
      const known = new Set(loaded.map((w) => w.id));
      loaded = page.workflows.filter((w) => !known.has(w.id)).concat(loaded.map((w) => fresh.get(w.id) || w));
      draw();
    } catch { /* the next event or a reload tries again */ }
  }, 1000);
  ctx.on(ctx.app.live, "event", (ev) => {
    const e = ev.detail;
    if (e.kind === "workflow" || (e.workflow_id && e.type !== "job.progress" && loaded.some((w) => w.id === e.workflow_id))) refresh();
  });
  ctx.on(ctx.app.live, "resync", refresh);
  ctx.onLeave(() => refresh.cancel());
  more.addEventListener("click", () => load(cursor));
  await load(null);
}
