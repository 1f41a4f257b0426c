// Usage that handlers reported (`ctx.usage`), from GET /api/v1/usage, summed per UTC day
// (the `day` of an attempt is when it ended, in UTC: docs/limits.md): the overview's charts
// of cost and tokens over the last 14 days, and the usage table of a workflow's steps.
// A caller sees its own tenant's usage; the deployment's admin every tenant's.

import { get, explain, qs, serverNow } from "./api.js";
import { h, fill, notice, throttle, parseTime } from "./dom.js";
import { barChart } from "./chart.js";

export const DAYS = 14;
const DAY_MS = 86400000;
const MAX_RANGE_DAYS = 365; // the API refuses a range of 366 days or more
const exact = new Intl.NumberFormat(undefined, { maximumFractionDigits: 4 });
const compact = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 2 });
const dayName = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", timeZone: "UTC" });

export const fmtNum = (v) => exact.format(v || 0);
const fmtAxis = (v) => compact.format(v || 0);

/** The UTC day (YYYY-MM-DD) of time `t` (ms), `back` days earlier. */
export function utcDay(t, back = 0) {
  return new Date(t - back * DAY_MS).toISOString().slice(0, 10);
}

/** The last `n` UTC days up to the server's today, oldest first. */
export function lastDays(now, n = DAYS) {
  return Array.from({ length: n }, (_, i) => utcDay(now, n - 1 - i));
}

/** The overview's usage: cost per day and tokens (in, out) per day, last 14 UTC days. */
export async function usageOverview(ctx, parent) {
  const err = notice();
  const note = h("p", { class: "muted small usage-note" });
  const charts = h("div", { class: "usage-charts" });
  parent.append(err, charts, note);

  async function load() {
    const days = lastDays(serverNow());
    try {
      const out = await get(`/usage${qs({ group_by: "day", from: days[0], to: days.at(-1) })}`);
      if (ctx.signal.aborted) return;
      err.show("");
      const by = new Map(out.rows.map((r) => [r.key, r]));
      const pick = (f) => days.map((d) => by.get(d)?.[f] || 0);
      const [cost, tin, tout] = [pick("cost"), pick("tokens_in"), pick("tokens_out")];
      const sum = (xs) => xs.reduce((a, b) => a + b, 0);
      const names = days.map((d, i) => (i === days.length - 1 ? `${d} (today, UTC)` : d));
      const ticks = [[0.5, dayName.format(Date.parse(days[0]))], [DAYS / 2 + 0.5, dayName.format(Date.parse(days[DAYS / 2]))], [DAYS - 0.5, "today"]];
      fill(charts,
        barChart({
          id: "usage-cost-title", title: `Cost per UTC day over the last ${DAYS} days: ${fmtNum(sum(cost))} in all`,
          slots: names, series: [{ name: "cost", cls: "cost", values: cost }], ticks, fmt: fmtNum, axisFmt: fmtAxis,
          integers: false, keys: [h("span", { class: "key cost" }, `Cost: ${fmtNum(sum(cost))}`)],
          tableCaption: "Cost per day", slotHeader: "day",
        }),
        barChart({
          id: "usage-tokens-title",
          title: `Tokens per UTC day over the last ${DAYS} days: ${fmtNum(sum(tin))} in, ${fmtNum(sum(tout))} out`,
          slots: names, ticks, fmt: fmtNum, axisFmt: fmtAxis,
          series: [{ name: "tokens in", cls: "tokens-in", values: tin }, { name: "tokens out", cls: "tokens-out", values: tout }],
          keys: [h("span", { class: "key tokens-in" }, `Tokens in: ${fmtNum(sum(tin))}`), " ",
            h("span", { class: "key tokens-out" }, `Tokens out: ${fmtNum(sum(tout))}`)],
          tableCaption: "Tokens per day", slotHeader: "day",
        }));
      note.textContent = out.rows.length
        ? `${ctx.app.me?.global_admin ? "Every tenant's" : `Tenant ${ctx.app.me?.tenant}'s`} usage, as handlers reported it; days are UTC.`
        : `No usage reported in the last ${DAYS} days.`;
    } catch (e) {
      if (!ctx.signal.aborted) err.show(`Usage unavailable: ${explain(e)}`);
    }
  }

  // An attempt's usage is written before its job moves on, so a finish is when it changes.
  const soon = throttle(load, 5000);
  ctx.on(ctx.app.live, "event", (e) => { if (e.detail.type === "job.completed" || e.detail.type === "job.failed") soon(); });
  ctx.on(ctx.app.live, "resync", soon);
  ctx.onLeave(() => soon.cancel());
  ctx.every(60000, load); // the days roll over
  await load();
}

/** A workflow's usage per step (GET /usage?group_by=job&workflow_id=): from the UTC day it
 * was created (at most a year back, as the API allows) to today, so the read stays on the
 * (tenant, day) index. */
export async function workflowUsage(workflowId, createdAt) {
  const now = serverNow();
  const from = utcDay(Math.max(parseTime(createdAt) ?? now, now - MAX_RANGE_DAYS * DAY_MS));
  const out = await get(`/usage${qs({ group_by: "job", workflow_id: workflowId, from, to: utcDay(now) })}`);
  return out.rows;
}

/** A table of usage rows (one per job), labelled by step (`steps`: job id -> step, in the
 * workflow's order), with the total in its footer. */
export function usageTable(rows, steps, caption) {
  const order = [...steps.keys()];
  const sorted = [...rows].sort((a, b) => order.indexOf(a.key) - order.indexOf(b.key));
  const total = { attempts: 0, tokens_in: 0, tokens_out: 0, cost: 0, counters: {} };
  for (const r of rows) {
    for (const f of ["attempts", "tokens_in", "tokens_out", "cost"]) total[f] += r[f] || 0;
    for (const [k, v] of Object.entries(r.counters || {})) total.counters[k] = (total.counters[k] || 0) + v;
  }
  const counters = (c) => Object.entries(c || {}).sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => `${k} ${fmtNum(v)}`).join(", ") || "—";
  const cells = (r) => [
    h("td", { class: "num" }, fmtNum(r.attempts)), h("td", { class: "num" }, fmtNum(r.tokens_in)),
    h("td", { class: "num" }, fmtNum(r.tokens_out)), h("td", { class: "num" }, fmtNum(r.cost)),
    h("td", { class: "wide" }, counters(r.counters)),
  ];
  const col = (text, cls = "num") => h("th", { scope: "col", class: cls }, text);
  return h("table", { class: "usage-steps" },
    h("caption", { class: "visually-hidden" }, caption),
    h("thead", {}, h("tr", {}, col("Step", null), col("Attempts"), col("Tokens in"), col("Tokens out"), col("Cost"), col("Other counters", "wide"))),
    h("tbody", {}, sorted.map((r) => {
      const st = steps.get(r.key);
      return h("tr", { "data-key": st?.key || r.key },
        h("th", { scope: "row" }, h("a", { href: `#/jobs/${r.key}` }, st?.key || r.key)), cells(r));
    })),
    h("tfoot", {}, h("tr", { "data-key": "total" }, h("th", { scope: "row" }, "Total"), cells(total))));
}
