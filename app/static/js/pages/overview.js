// Overview: the engines (queued, running, limit, paused, with their controls), jobs
// completed and failed in the last five minutes (see stats.js for where those numbers come
// from), the most recent failures (GET /api/v1/jobs/dead-letter, newest first, refreshed
// when a job.failed event arrives), and usage per day over the last 14 days (usage.js).

import { get, explain, serverNow } from "../api.js";
import { h, clear, fill, notice, throttle, timeEl, shortId } from "../dom.js";
import { chart } from "../chart.js";
import { WINDOW_MS } from "../stats.js";
import { queueTable } from "./queues.js";
import { usageOverview, DAYS } from "../usage.js";

export async function render(ctx) {
  ctx.title("Overview");
  const { stats } = ctx.app;
  const workers = h("p", { class: "muted workers-line" });
  ctx.main.append(h("div", { class: "page-head" }, h("h1", {}, "Overview"), workers));

  const grid = h("div", { class: "overview-grid" });
  const chartBox = h("section", { class: "card", "aria-labelledby": "chart-h" },
    h("h2", { id: "chart-h" }, "Finished in the last 5 minutes"));
  const chartSlot = h("div", { class: "chart-slot" });
  chartBox.append(chartSlot);
  const failBox = h("section", { class: "card", "aria-labelledby": "fail-h" },
    h("h2", { id: "fail-h" }, "Recent failures"));
  const failErr = notice();
  const failList = h("ol", { class: "failures" });
  failBox.append(failErr, failList, h("p", {}, h("a", { href: "#/jobs?status=failed" }, "All failed jobs")));
  const engines = h("section", { class: "card span-2", "aria-labelledby": "engines-h" },
    h("h2", { id: "engines-h" }, "Engines"));
  const usageBox = h("section", { class: "card span-2", "aria-labelledby": "usage-h" },
    h("h2", { id: "usage-h" }, `Usage, last ${DAYS} days`));
  grid.append(engines, chartBox, failBox, usageBox);
  ctx.main.append(grid);

  const drawChart = () => {
    const now = serverNow();
    fill(chartSlot, chart(stats.buckets(now), { partial: stats.partialSince !== null && stats.partialSince > now - WINDOW_MS }));
  };
  drawChart();
  ctx.on(stats, "change", throttle(drawChart, 500));
  ctx.every(5000, drawChart); // the window slides

  async function failures() {
    try {
      const page = await get("/jobs/dead-letter?limit=8");
      if (ctx.signal.aborted) return;
      failErr.show("");
      fill(failList, ...(page.jobs.length ? page.jobs.map(failureItem) : [h("li", { class: "muted empty" }, "No failed jobs.")]));
    } catch (e) {
      if (!ctx.signal.aborted) failErr.show(`Failures unavailable: ${explain(e)}`);
    }
  }

  async function workerLine() {
    try {
      const w = await get("/jobs/workers?status=alive");
      if (ctx.signal.aborted) return;
      const slots = w.workers.reduce((a, x) => a + x.concurrency, 0);
      workers.textContent = `${w.count} worker${w.count === 1 ? "" : "s"} alive, ${slots} job slots`;
    } catch (e) {
      workers.textContent = e.status === 403 ? "" : `Workers unavailable: ${explain(e)}`;
    }
  }

  const soonFailures = throttle(failures, 1000);
  ctx.on(ctx.app.live, "event", (e) => { if (e.detail.type === "job.failed") soonFailures(); });
  ctx.on(ctx.app.live, "resync", soonFailures);
  ctx.onLeave(() => soonFailures.cancel());
  ctx.every(15000, workerLine);
  await Promise.all([queueTable(ctx, engines, { controls: true }), failures(), workerLine(), usageOverview(ctx, usageBox)]);
}

function failureItem(j) {
  const err = j.last_error || (j.errors || []).at(-1);
  return h("li", {},
    h("a", { href: `#/jobs/${j.id}` }, j.name || `${j.engine}.${j.operation}`),
    h("span", { class: "muted" }, ` ${shortId(j.id)} · `), timeEl(j.completed_at),
    err ? h("div", { class: "error-line" }, h("code", {}, err.code), " ", err.message) : null);
}
