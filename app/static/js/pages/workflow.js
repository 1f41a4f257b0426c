// One workflow: GET /api/v1/jobs/workflows/{id}/status (every step with its status and
// `why`), drawn as a DAG whose nodes take the colour of each job.* event of the workflow
// as it arrives over the WebSocket; the status is then re-read (at most every 0.5 s) for
// the reasons a waiting step waits, which events do not carry. Cancel and retry:
// POST /api/v1/jobs/workflows/{id}/cancel, /retry. Usage: the steps' reported usage and
// its total (GET /api/v1/usage?group_by=job&workflow_id=, usage.js), re-read when a step
// finishes an attempt (an attempt's usage is written before its job moves on). An approval
// that awaits the signed-in user's decision gets Approve / Reject here (approve.js). Steps that
// appear meanwhile (a map step's children, steps a handler added) come with their events'
// re-read, and the DAG is drawn again.

import { get, post, explain } from "../api.js";
import { h, clear, fill, notice, throttle, fmtTime, statusBadge, progressBar, TERMINAL } from "../dom.js";
import { drawDag, whyText, what } from "../dag.js";
import { decideForm } from "../approve.js";
import { workflowUsage, usageTable } from "../usage.js";

const MAX_DRAWN = 400; // more steps than this: the table only

export async function render(ctx) {
  const id = ctx.params[0];
  ctx.title(`Workflow ${id}`);
  const err = notice();
  const actionMsg = notice("info");
  const title = h("h1", {}, "Workflow");
  const badge = h("span");
  const cancelBtn = h("button", { type: "button", class: "danger" }, "Cancel");
  const retryBtn = h("button", { type: "button" }, "Retry failed steps");
  const summary = h("div", { class: "wf-summary" });
  const graph = h("div", { class: "dag-wrap", tabindex: "-1" });
  const legend = h("p", { class: "legend", "aria-hidden": "true" },
    ["pending", "scheduled", "queued", "awaiting", "running", "completed", "failed", "cancelled"].map((st) => h("span", { class: `key st-${st}` }, st)));
  // Approvals of this workflow that wait for the signed-in user (docs/waiting-steps.md).
  const decideList = h("div");
  const decideCard = h("section", { class: "card", "aria-labelledby": "decide-h", hidden: true },
    h("h2", { id: "decide-h" }, "Waiting for your decision"), decideList);
  const forms = new Map(); // step key -> its form, kept across re-reads
  const tbody = h("tbody");
  const usageErr = notice();
  const usageBody = h("div", { class: "table-wrap" });
  const usageCard = h("section", { class: "card", "aria-labelledby": "usage-h", hidden: true },
    h("h2", { id: "usage-h" }, "Usage"), usageErr, usageBody);
  ctx.main.append(
    h("p", { class: "crumbs" }, h("a", { href: "#/workflows" }, "Workflows"), " / ", h("span", { class: "mono" }, id)),
    h("div", { class: "page-head" }, title, badge, h("div", { class: "actions" }, cancelBtn, retryBtn)),
    summary, actionMsg, err, decideCard,
    h("section", { class: "card", "aria-labelledby": "dag-h" }, h("h2", { id: "dag-h" }, "Steps"), legend, graph),
    h("section", { class: "card", "aria-labelledby": "steps-h" }, h("h2", { id: "steps-h" }, "Steps as a table"),
      h("div", { class: "table-wrap" }, h("table", { class: "steps" },
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Step"), h("th", { scope: "col" }, "Status"),
          h("th", { scope: "col", class: "wide" }, "Engine"), h("th", { scope: "col", class: "wide" }, "Depends on"),
          h("th", { scope: "col" }, "Why it waits"))),
        tbody))),
    usageCard);

  let wf = null;
  let dag = null;
  let shape = ""; // the steps and edges drawn; redrawn only when they change (steps added)
  const touched = new Map(); // job id -> when its last event arrived
  const byJob = new Map(); // job id -> step

  function show(w, askedAt) {
    wf = w;
    title.textContent = w.name;
    ctx.title(`${w.name} (workflow)`);
    fill(badge, statusBadge(w.status));
    const c = w.counts;
    fill(summary, progressBar(w.progress, w.status, "workflow progress"),
      h("span", { class: "muted" }, ` ${c.completed} completed, ${c.running} running, ${c.queued} queued, ${c.pending + c.scheduled + (c.awaiting || 0)} waiting, ${c.failed} failed, ${c.cancelled} cancelled of ${w.total}`),
      h("div", { class: "muted small" }, `policy ${w.failure_policy} · created ${fmtTime(w.created_at)}${w.completed_at ? ` · finished ${fmtTime(w.completed_at)}` : ""}`));
    cancelBtn.hidden = TERMINAL.has(w.status);
    retryBtn.hidden = !(c.failed > 0 || (w.status === "failed") || (w.status === "cancelled" && c.cancelled > 0));
    const steps = w.steps || [];
    const prev = new Map(byJob);
    byJob.clear();
    for (const st of steps) {
      // An event that arrived after this status was asked for is newer than the answer.
      const old = prev.get(st.job_id);
      const fresh = touched.get(st.job_id);
      byJob.set(st.job_id, old && fresh !== undefined && fresh > askedAt ? { ...st, status: old.status, progress: old.progress } : st);
    }
    const newShape = steps.map((st) => `${st.key}<${(st.depends_on || []).join(",")}`).join(";");
    if (newShape !== shape) {
      shape = newShape;
      clear(graph);
      if (steps.length <= MAX_DRAWN) {
        dag = drawDag([...byJob.values()], { label: `Steps of ${w.name}` });
        graph.append(dag.svg);
      } else {
        dag = null;
        graph.append(h("p", { class: "muted" }, `${steps.length} steps: too many to draw; see the table below.`));
      }
    }
    for (const st of byJob.values()) dag?.update(st);
    drawTable();
    drawDecisions(steps);
  }

  function drawDecisions(steps) {
    const mine = steps.filter((st) => st.type === "approval" && st.status === "awaiting" && st.can_decide);
    for (const k of [...forms.keys()]) if (!mine.some((st) => st.key === k)) forms.delete(k);
    for (const st of mine) {
      if (!forms.has(st.key)) {
        forms.set(st.key, h("div", { class: "decide-step", "data-key": st.key }, h("h3", {}, st.key),
          h("p", { class: "muted small" }, whyText(st)),
          decideForm(id, st.key, { name: `${st.key} of ${wf.name}`, onDone: (out) => { if (out) actionMsg.show(`${st.key}: ${out.decision.decision}.`, "info"); load(); } })));
      }
    }
    decideCard.hidden = mine.length === 0;
    fill(decideList, ...mine.map((st) => forms.get(st.key)));
  }

  function drawTable() {
    fill(tbody, ...[...byJob.values()].map((st) => h("tr", { "data-key": st.key, "data-status": st.status },
      h("th", { scope: "row" }, h("a", { href: `#/jobs/${st.job_id}` }, st.key)),
      h("td", {}, statusBadge(st.status)),
      h("td", { class: "wide" }, what(st)),
      h("td", { class: "wide" }, deps(st.depends_on)),
      h("td", {}, st.status === "running" || TERMINAL.has(st.status) ? (st.cancel_reason || "—") : whyText(st) || "—"))));
  }

  // A map step depends on each of its children (`key[0]` .. `key[n-1]`): a range, not a list.
  function deps(keys = []) {
    if (keys.length <= 8) return keys.join(", ") || "—";
    return `${keys.slice(0, 3).join(", ")}, … ${keys[keys.length - 1]} (${keys.length})`;
  }

  async function load() {
    const askedAt = performance.now();
    try {
      const w = await get(`/jobs/workflows/${id}/status`);
      if (!ctx.signal.aborted) { err.show(""); show(w, askedAt); }
    } catch (e) {
      if (ctx.signal.aborted) return;
      err.show(e.status === 404 ? "No such workflow (or it is not yours to see)." : `Could not load the workflow: ${explain(e)}`);
    }
  }

  async function loadUsage() {
    try {
      const rows = await workflowUsage(id, wf.created_at);
      if (ctx.signal.aborted) return;
      usageErr.show("");
      usageCard.hidden = !rows.length; // like a job's page: no card until a step reports usage
      fill(usageBody, rows.length ? usageTable(rows, byJob, `Usage reported by the steps of ${wf.name}, and the total`) : null);
    } catch (e) {
      if (ctx.signal.aborted) return;
      usageCard.hidden = false;
      usageErr.show(`Usage unavailable: ${explain(e)}`);
    }
  }

  await load();
  if (!wf) return;

  const refresh = throttle(load, 500);
  const refreshUsage = throttle(loadUsage, 1000);
  const redrawTable = throttle(drawTable, 250);
  ctx.on(ctx.app.live, "event", (ev) => {
    const e = ev.detail;
    if (e.workflow_id !== id) return;
    if (e.kind === "job") {
      const st = byJob.get(e.job_id);
      if (st) {
        const next = e.type === "job.progress" ? { ...st, progress: e.progress?.percent ?? st.progress } : { ...st, status: e.status };
        if (next.status === "running" || TERMINAL.has(next.status)) next.why = null;
        byJob.set(e.job_id, next);
        touched.set(e.job_id, performance.now());
        dag?.update(next); // the colour changes now; the reasons follow with the re-read
        redrawTable();
      }
      if (e.type !== "job.progress") refresh();
      if (e.type !== "job.progress" && e.type !== "job.running") refreshUsage();
    } else {
      refresh();
    }
  });
  ctx.on(ctx.app.live, "resync", () => { refresh(); refreshUsage(); });
  ctx.onLeave(() => { refresh.cancel(); redrawTable.cancel(); refreshUsage.cancel(); });
  const usageLoaded = loadUsage(); // after the listeners: no event waits for it

  async function act(button, call, done) {
    button.disabled = true;
    actionMsg.show("");
    try {
      const out = await call();
      actionMsg.show(done(out), "info");
      await load();
      button.disabled = false;
    } catch (e) {
      actionMsg.show(explain(e), "error");
      if (e.status === 403) { button.title = "Your role may not do this"; return; }
      button.disabled = false;
    }
  }
  cancelBtn.addEventListener("click", () => act(cancelBtn, () => post(`/jobs/workflows/${id}/cancel`), () => "Cancelling every unfinished step."));
  retryBtn.addEventListener("click", () => act(retryBtn, () => post(`/jobs/workflows/${id}/retry`),
    (out) => `${Object.keys(out.jobs || {}).length} step(s) queued again.`));
  await usageLoaded;
}
