// One job: GET /api/v1/jobs/{id}/status (parameters, result, error history, and `why` it
// waits), its event timeline (a WebSocket of its own subscribed to the job with since=0,
// which replays the job's whole history from the event log and then stays live), and the
// cancel and retry buttons (POST /api/v1/jobs/{id}/cancel, /retry). The page re-reads the
// status when an event arrives, since `why`, the result and errors are not in the events.

import { get, post, explain, session } from "../api.js";
import { h, clear, fill, notice, throttle, timeEl, fmtTime, fmtClock, fmtDuration, statusBadge, progressBar, pre, TERMINAL } from "../dom.js";
import { Live } from "../live.js";

export async function render(ctx) {
  const id = ctx.params[0];
  ctx.title(`Job ${id}`);
  const err = notice();
  const title = h("h1", {}, "Job");
  const badge = h("span");
  const progress = h("div", { class: "job-progress" });
  const cancelBtn = h("button", { type: "button", class: "danger" }, "Cancel");
  const retryBtn = h("button", { type: "button" }, "Retry");
  const actionMsg = notice("info");
  const facts = h("dl", { class: "facts" });
  const why = h("section", { class: "card why", "aria-labelledby": "why-h", hidden: true }, h("h2", { id: "why-h" }, "Why it waits"));
  const whyList = h("ul", { class: "why-list" });
  why.append(whyList);
  const params = h("div");
  const result = h("div");
  const errors = h("ol", { class: "errors" });
  const usage = h("div");
  const usageCard = h("section", { class: "card", "aria-labelledby": "usage-h", hidden: true }, h("h2", { id: "usage-h" }, "Usage"), usage);
  const timeline = h("ol", { class: "timeline", "aria-live": "polite", "aria-relevant": "additions" });
  const timelineState = h("p", { class: "muted small" }, "Loading the event log…");

  ctx.main.append(
    h("p", { class: "crumbs" }, h("a", { href: "#/jobs" }, "Jobs"), " / ", h("span", { class: "mono" }, id)),
    h("div", { class: "page-head" }, title, badge, h("div", { class: "actions" }, cancelBtn, retryBtn)),
    progress, actionMsg, err, why,
    h("div", { class: "detail-grid" },
      h("section", { class: "card", "aria-labelledby": "facts-h" }, h("h2", { id: "facts-h" }, "Details"), facts),
      h("section", { class: "card", "aria-labelledby": "params-h" }, h("h2", { id: "params-h" }, "Parameters"), params),
      h("section", { class: "card", "aria-labelledby": "result-h" }, h("h2", { id: "result-h" }, "Result"), result),
      h("section", { class: "card", "aria-labelledby": "errors-h" }, h("h2", { id: "errors-h" }, "Error history"), errors),
      usageCard,
      h("section", { class: "card span-2", "aria-labelledby": "timeline-h" }, h("h2", { id: "timeline-h" }, "Event timeline"), timelineState, timeline)));

  let job = null;

  function show(j) {
    job = j;
    title.textContent = j.name || `${j.engine}.${j.operation}`;
    ctx.title(`${title.textContent} (job)`);
    fill(badge, statusBadge(j.status));
    fill(progress, progressBar(j.progress?.percent, j.status, "job progress"),
      j.progress?.stage ? h("span", { class: "muted" }, ` ${j.progress.stage}`) : null);
    const step = j.workflow_id
      ? [h("a", { href: `#/workflows/${j.workflow_id}` }, j.workflow_id), j.step_key ? ` (step ${j.step_key})` : ""]
      : "—";
    const rc = j.retry_config || {};
    fill(facts, ...[
      ["Id", h("span", { class: "mono" }, j.id)], ["Engine", j.engine], ["Operation", j.operation],
      ["Priority", j.priority], ["Owner", j.owner || "—"], ["Workflow", step],
      ["Created", fmtTime(j.created_at)], ["Queued", fmtTime(j.queued_at)], ["Run at", fmtTime(j.run_at)],
      ["Started", fmtTime(j.started_at)], ["Finished", fmtTime(j.completed_at)],
      ["Execution time", fmtDuration(j.execution_time_ms)],
      ["Attempt", `${j.attempt} (retries ${j.retry_count} of ${rc.max_retries ?? "?"})`],
      ["Timeout", j.timeout_seconds ? `${j.timeout_seconds} s` : "—"], ["Dedupe key", j.dedupe_key || "—"],
      ["Worker", j.lease_owner || "—"],
      ...(j.cancel_reason ? [["Cancel reason", j.cancel_reason]] : []),
    ].flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v ?? "—")]));
    fill(params, pre(j.parameters));
    fill(result, j.result === null || j.result === undefined
      ? h("p", { class: "muted" }, TERMINAL.has(j.status) ? "No result." : "Not finished yet.")
      : pre(j.result));
    const errs = j.errors || [];
    fill(errors, ...(errs.length ? errs.map((e, i) => h("li", {},
      h("div", {}, h("strong", {}, `Attempt ${e.attempt ?? i + 1}`), " · ", h("code", {}, e.code), e.at ? [" · ", timeEl(e.at)] : null,
        e.worker ? h("span", { class: "muted" }, ` · ${e.worker}`) : null),
      h("div", { class: "error-line" }, e.message))) : [h("li", { class: "muted empty" }, "No errors.")]));
    usageCard.hidden = !j.usage;
    if (j.usage) {
      const u = j.usage;
      const rows = [["Tokens in", u.tokens_in], ["Tokens out", u.tokens_out], ["Cost", u.cost],
        ...Object.entries(u.counters || {}).sort(([a], [b]) => a.localeCompare(b))];
      fill(usage, h("table", { class: "usage" },
        h("caption", { class: "visually-hidden" }, "Usage reported by the job's attempts, summed"),
        h("tbody", {}, ...rows.map(([k, v]) => h("tr", {}, h("th", { scope: "row" }, k), h("td", { class: "num" }, String(v)))))));
    }
    const reasons = j.why?.reasons || [];
    why.hidden = !reasons.length;
    fill(whyList, ...reasons.map((r) => h("li", { "data-reason": r.reason }, h("strong", {}, r.reason), ": ", r.message || JSON.stringify(r))));
    cancelBtn.hidden = TERMINAL.has(j.status);
    cancelBtn.disabled = Boolean(j.cancel_requested);
    if (j.cancel_requested && !TERMINAL.has(j.status)) cancelBtn.textContent = "Cancelling…";
    retryBtn.hidden = !(j.status === "failed" || j.status === "cancelled");
    if (j.workflow_id) {
      retryBtn.textContent = "Retry the workflow";
      retryBtn.title = "A step is retried through its workflow: every failed step and those cancelled because of it run again";
    }
  }

  async function load() {
    try {
      const j = await get(`/jobs/${id}/status`);
      if (!ctx.signal.aborted) { err.show(""); show(j); }
    } catch (e) {
      if (ctx.signal.aborted) return;
      err.show(e.status === 404 ? "No such job (or it is not yours to see)." : `Could not load the job: ${explain(e)}`);
    }
  }

  async function act(button, call, done) {
    button.disabled = true;
    actionMsg.show("");
    try {
      const out = await call();
      actionMsg.show(done(out), "info");
      await load();
    } catch (e) {
      actionMsg.show(explain(e), "error");
      if (e.status === 403) { button.title = "Your role may not do this"; return; }
      button.disabled = false;
    }
  }
  cancelBtn.addEventListener("click", () => act(cancelBtn, () => post(`/jobs/${id}/cancel`),
    (j) => j.status === "cancelled" ? "Cancelled." : "Cancel requested: the handler has been signalled."));
  retryBtn.addEventListener("click", () => act(retryBtn,
    () => job.workflow_id ? post(`/jobs/workflows/${job.workflow_id}/retry`) : post(`/jobs/${id}/retry`),
    () => job.workflow_id ? "The workflow's failed steps are queued again." : "Queued again with a fresh attempt budget."));

  await load();
  if (!job) return;

  // The timeline: a connection of its own, so that events the shared connection already
  // delivered are replayed here too (a connection never sends one seq twice).
  const seen = new Set();
  const refresh = throttle(load, 400);
  const live = new Live(session.token, [{ job_id: id, since: 0 }]);
  live.addEventListener("event", (ev) => {
    const e = ev.detail;
    if (seen.has(e.seq) || e.job_id !== id) return;
    seen.add(e.seq);
    timeline.append(timelineItem(e));
    refresh();
  });
  live.addEventListener("subscribed", (ev) => {
    timelineState.textContent = `${seen.size} events, live.`;
  });
  live.addEventListener("error", (ev) => { timelineState.textContent = `Timeline: ${ev.detail.message || ev.detail.code}`; });
  live.start();
  ctx.onLeave(() => { live.stop(); refresh.cancel(); });
}

function timelineItem(e) {
  const bits = [];
  if (e.type === "job.progress" && e.progress) bits.push(`${Math.round(e.progress.percent ?? 0)}%${e.progress.stage ? ` ${e.progress.stage}` : ""}`);
  if (e.error) bits.push(`${e.error.code}: ${e.error.message}`);
  if (e.reason) bits.push(`reason: ${e.reason}`);
  return h("li", { class: `ev st-${e.status}`, "data-type": e.type },
    h("time", { datetime: e.at, title: fmtTime(e.at) }, fmtClock(e.at)), " ",
    h("span", { class: "ev-type" }, e.type), bits.length ? h("span", { class: "ev-detail" }, ` ${bits.join(" · ")}`) : null);
}
