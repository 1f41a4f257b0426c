// Queue controls: per engine, queued, running, limits and pause state
// (GET /api/v1/jobs/queue/status), with pause, resume (POST .../{name}/pause|resume) and
// the concurrency limit (PUT .../{name}/limits). On the queues page the deployment's admin
// also opens each engine's full limits editor (limits.js): rate, burst, per-key limits and
// tenants' weights. Limits are the deployment admin's alone, so no one else is offered them.
// Under an engine, the limit keys at their limit (`keys_at_limit`: each key with queued
// jobs its per-key concurrency, its per-key rate or a provider's hold on it keeps from
// starting), for everyone signed in: the API gives a tenant its own keys only.
// Refreshed when a job event arrives (at most once a second) and every 5 s, since pausing
// and limits are not events.

import { get, post, put, explain, atLeast, serverNow } from "../api.js";
import { h, fill, notice, throttle, fmtDuration, fmtAgo, fmtTime, parseTime } from "../dom.js";
import { limitsEditor } from "../limits.js";

export async function render(ctx) {
  ctx.title("Queues");
  ctx.main.append(h("h1", {}, "Queues"),
    h("p", { class: "lede" }, "Each engine's line: pause stops new jobs from starting (running ones finish): the deployment's admin pauses an engine for everyone, a tenant's operator only the tenant's own jobs. The limit caps how many run at once across every worker and tenant, and is the deployment admin's."));
  const section = h("section", { "aria-labelledby": "engines-title", class: "card" }, h("h2", { id: "engines-title" }, "Engines"));
  ctx.main.append(section);
  await queueTable(ctx, section, { controls: true, editor: true });
}

/** What limits an engine has, in a few words: its concurrency first (alone when that is all). */
export function limitText(q) {
  const parts = [String(q.max_concurrent_jobs)];
  if (q.rate) parts.push(`rate ${q.rate}, burst ${q.burst}`);
  if (q.key) {
    const each = [q.key_concurrency ? `${q.key_concurrency} at once` : null, q.key_rate ? `${q.key_rate}` : null].filter(Boolean);
    parts.push(`per ${q.key}${each.length ? `: ${each.join(", ")}` : ""}`);
  }
  return parts.join(" · ");
}

const KEY_LIMITS = { concurrency: "concurrency limit", rate: "rate limit", held: "held by the provider" };

/** One key at its limit: `<tenant>/<value>`, which limit, how many of its jobs run, and
 * when it may start one (a rate's next slot, a hold's end; a concurrency limit, when one
 * of its jobs ends), relative to the server's clock. */
function keyItem(k, now) {
  const at = parseTime(k.until);
  let when = null;
  if (at !== null) {
    const rel = at - now < 1500 ? "any moment" : fmtAgo(at, now);
    when = h("time", { datetime: new Date(at).toISOString(), title: fmtTime(at) },
      k.limit === "held" ? `lifts ${rel}` : `next slot ${rel}`);
  } else if (k.limit === "concurrency") {
    when = "until one of its jobs ends";
  }
  return h("li", { "data-key": k.key, "data-limit": k.limit },
    h("span", { class: "key-name" }, k.key), " ",
    h("span", { class: "badge st-paused" }, KEY_LIMITS[k.limit] || k.limit), " ",
    h("span", { class: "key-facts" }, [`${k.running} running`, when].filter(Boolean).flatMap((x, i) => (i ? [" · ", x] : [x]))));
}

/** The engines table inside `parent`; with `controls`, pause/resume and the concurrency
 * limit; with `editor` too, the deployment admin's full limits editor per engine. */
export async function queueTable(ctx, parent, { controls = true, editor = false } = {}) {
  const err = notice();
  const wrap = h("div", { class: "table-wrap" });
  parent.append(err, wrap);
  const rows = new Map(); // engine -> {tr, cells...}
  // A role below operator may watch but not steer: the controls are shown disabled, and a
  // 403 on any of them (the API decides) does the same.
  let denied = !atLeast(ctx.app.me, "operator");
  // The engine's own pause and its limit are the bootstrap admin's; a tenant operator's
  // pause is its tenant's (docs/security.md).
  const deploymentAdmin = !!ctx.app.me?.global_admin;
  const ownPause = (q) => (deploymentAdmin ? q.paused : q.tenant_paused);
  const why = h("p", { class: "help", hidden: !denied || !controls },
    `Your role (${ctx.app.me?.role}) may watch the queues; pausing, resuming and limits need the operator role.`);
  parent.insertBefore(why, wrap);

  const cols = controls ? 7 : 6;
  const tbody = h("tbody");
  const table = h("table", { class: "engines" },
    h("caption", { class: "visually-hidden" }, "Engines: queued, running, limit and whether paused"),
    h("thead", {}, h("tr", {},
      h("th", { scope: "col" }, "Engine"), h("th", { scope: "col", class: "num" }, "Queued"),
      h("th", { scope: "col", class: "num" }, "Running"), h("th", { scope: "col", class: "num" }, "Limit"),
      h("th", { scope: "col" }, "State"), h("th", { scope: "col", class: "wide" }, "Oldest waiting"),
      controls ? h("th", { scope: "col" }, "Controls") : null)),
    tbody);
  wrap.append(table);

  function row(q) {
    let r = rows.get(q.name);
    if (!r) {
      const state = h("span");
      const toggle = h("button", { type: "button", class: "small", "data-action": "toggle" });
      const limitIn = h("input", { type: "number", min: "1", max: "100000", step: "1", required: true, class: "limit-input",
        id: `limit-${q.name}`, "aria-label": `Limit for ${q.name}`, inputmode: "numeric" });
      const save = h("button", { type: "submit", class: "small" }, "Set limit");
      const rowErr = h("span", { class: "field-error", role: "alert" });
      const form = h("form", { class: "limit-form", "aria-label": `Limit of ${q.name}` }, limitIn, save);
      r = { q, state, toggle, limitIn, save, rowErr, cells: {} };
      form.hidden = !deploymentAdmin; // an engine's limits are the deployment admin's alone
      let more = null;
      if (controls && editor && deploymentAdmin) {
        const ed = limitsEditor(q, { onSaved: (saved) => { if (!r.dirty) r.limitIn.value = saved.max_concurrent_jobs; row(saved); } });
        const id = `limits-${q.name}`;
        r.editorRow = h("tr", { class: "limits-row", id, "data-editor": q.name, hidden: true },
          h("td", { colspan: "7" }, ed.el));
        more = h("button", { type: "button", class: "small", "aria-expanded": "false", "aria-controls": id,
          "aria-label": `Edit all limits of ${q.name}` }, "Limits…");
        more.addEventListener("click", () => {
          const open = r.editorRow.hidden;
          if (open) ed.show(r.q); // the latest status, not what it was when the page opened
          r.editorRow.hidden = !open;
          more.setAttribute("aria-expanded", String(open));
          if (open) ed.el.querySelector("input")?.focus();
        });
      }
      // The keys at their limit: a row of their own under the engine's, shown when there are any.
      r.keysList = h("ul", { class: "keys-at-limit", "aria-labelledby": `keys-${q.name}-h` });
      r.keysRow = h("tr", { class: "keys-row", "data-keys": q.name, hidden: true },
        h("td", { colspan: String(cols) },
          h("span", { class: "keys-h", id: `keys-${q.name}-h` }, `Keys of ${q.name} at their limit`), r.keysList));
      const labels = { queued: "queued", running: "running", max_concurrent_jobs: "limit", age: "oldest" };
      for (const k of Object.keys(labels)) r.cells[k] = h("td", { class: k === "age" ? "wide" : "num", "data-label": labels[k] });
      r.tr = h("tr", { "data-engine": q.name },
        h("th", { scope: "row" }, h("a", { href: `#/jobs?engine=${encodeURIComponent(q.name)}` }, q.name)),
        r.cells.queued, r.cells.running, r.cells.max_concurrent_jobs, h("td", {}, state), r.cells.age,
        controls ? h("td", { class: "controls" }, h("div", { class: "control-row" }, toggle, form, more), rowErr) : null);
      toggle.addEventListener("click", () => act(r, () => post(`/jobs/queue/${encodeURIComponent(r.q.name)}/${ownPause(r.q) ? "resume" : "pause"}`)));
      form.addEventListener("submit", (e) => {
        e.preventDefault();
        const n = Number(limitIn.value);
        if (!Number.isInteger(n) || n < 1 || n > 100000) {
          rowErr.textContent = "A whole number from 1 to 100000.";
          limitIn.setAttribute("aria-invalid", "true");
          return;
        }
        act(r, () => put(`/jobs/queue/${encodeURIComponent(r.q.name)}/limits`, { max_concurrent_jobs: n }), true);
      });
      limitIn.addEventListener("input", () => { r.dirty = true; });
      rows.set(q.name, r);
    }
    r.q = q;
    r.cells.queued.textContent = q.queued;
    r.cells.running.textContent = q.running;
    r.cells.max_concurrent_jobs.textContent = limitText(q);
    r.cells.age.textContent = q.oldest_queued_age_seconds == null ? "—" : fmtDuration(q.oldest_queued_age_seconds * 1000);
    const stopped = q.paused || q.tenant_paused || q.held_until != null;
    r.state.className = `badge ${stopped ? "st-paused" : "st-active"}`;
    const held = q.held_until == null ? ""
      : `held by the provider${q.held_key ? ` (${q.held_key})` : ""} until ${new Date(q.held_until).toLocaleTimeString()}`;
    r.state.textContent = q.paused ? "paused" : q.tenant_paused ? "paused for your tenant" : held || "active";
    const keys = q.keys_at_limit || [];
    r.keysRow.hidden = !keys.length;
    r.tr.classList.toggle("has-keys", keys.length > 0);
    const now = serverNow();
    fill(r.keysList, ...keys.map((k) => keyItem(k, now)));
    r.toggle.textContent = ownPause(q) ? "Resume" : "Pause";
    r.toggle.setAttribute("aria-label", `${ownPause(q) ? "Resume" : "Pause"} ${q.name}`);
    if (!r.dirty && document.activeElement !== r.limitIn) r.limitIn.value = q.max_concurrent_jobs;
    for (const c of [r.toggle, r.limitIn, r.save]) {
      c.disabled = denied || r.busy || (c !== r.toggle && !deploymentAdmin);
      if (denied) c.title = "Your role may not change queues";
      else if (c !== r.toggle && !deploymentAdmin) c.title = "An engine's limit is set by the deployment's admin";
    }
    return r;
  }

  async function act(r, call, isLimit = false) {
    r.busy = true;
    r.rowErr.textContent = "";
    r.limitIn.removeAttribute("aria-invalid");
    row(r.q);
    try {
      const q = await call();
      if (isLimit) r.dirty = false;
      r.busy = false;
      row(q);
    } catch (e) {
      r.busy = false;
      if (e.status === 403) { denied = true; why.hidden = false; for (const x of rows.values()) row(x.q); }
      if (isLimit && e.status === 422) r.limitIn.setAttribute("aria-invalid", "true");
      r.rowErr.textContent = explain(e);
      row(r.q);
    }
  }

  async function refresh() {
    try {
      const data = await get("/jobs/queue/status");
      if (ctx.signal.aborted) return;
      err.show("");
      for (const q of data.queues) row(q);
      const names = data.queues.map((q) => q.name);
      for (const [name, r] of rows) if (!names.includes(name)) { r.tr.remove(); r.keysRow.remove(); r.editorRow?.remove(); rows.delete(name); }
      const shown = [...tbody.children].filter((tr) => !tr.dataset.editor && !tr.dataset.keys).map((tr) => tr.dataset.engine || "-");
      if (!names.length) fill(tbody, h("tr", {}, h("td", { colspan: String(cols), class: "muted" }, "No engines yet.")));
      else if (shown.join() !== names.join()) fill(tbody, ...names.map((n) => [rows.get(n).tr, rows.get(n).keysRow, rows.get(n).editorRow])); // moving rows would lose focus
    } catch (e) {
      if (!ctx.signal.aborted) err.show(`Queue status unavailable: ${explain(e)}`);
    }
  }

  await refresh();
  const soon = throttle(refresh, 1000);
  ctx.on(ctx.app.live, "event", (e) => { if (e.detail.type.startsWith("job.") && e.detail.type !== "job.progress") soon(); });
  ctx.on(ctx.app.live, "resync", soon);
  ctx.every(5000, refresh);
  ctx.onLeave(() => soon.cancel());
  return { refresh };
}
