// Webhooks (docs/webhooks.md). #/webhooks: the tenant's webhooks (GET /api/v1/webhooks),
// the form that registers one (POST, a 422 shown at the field it names), and pause, resume
// and delete (POST .../{id}/pause|resume, DELETE .../{id}). #/webhooks/{id}: one webhook's
// deliveries, newest first, each with its attempts (GET .../{id}/deliveries), and Redeliver
// for a dead or delivered one (POST .../deliveries/{delivery}/redeliver). Both re-read every
// few seconds: deliveries are not events of the WebSocket.

import { api, get, post, qs, explain, atLeast } from "../api.js";
import { h, fill, notice, timeEl, fmtClock, fmtDuration } from "../dom.js";

const DEFAULT_EVENTS = ["job.failed", "workflow.failed"];

export async function render(ctx) {
  return ctx.params[0] ? deliveriesPage(ctx, ctx.params[0]) : listPage(ctx);
}

const stateBadge = (state) => h("span", { class: `badge st-${state}`, "data-state": state }, state);
const path = (id, rest = "") => `/webhooks/${encodeURIComponent(id)}${rest}`;

function randomSecret() {
  const bytes = crypto.getRandomValues(new Uint8Array(24));
  return "whsec-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function listPage(ctx) {
  ctx.title("Webhooks");
  const mayChange = atLeast(ctx.app.me, "operator");
  const err = notice();
  const tbody = h("tbody");
  ctx.main.append(
    h("h1", {}, "Webhooks"),
    h("p", { class: "lede" }, "Each webhook receives your tenant's events as signed HTTP POSTs, retried with back-off until it answers 2xx. A paused one keeps its deliveries waiting until it is resumed. See docs/webhooks.md for the signature check."),
    h("p", { class: "help", hidden: mayChange },
      `Your role (${ctx.app.me?.role}) may look at webhooks and their deliveries; registering and changing them needs the operator role.`),
    err);

  // --- the registration form -------------------------------------------------------------
  const fieldErr = (id) => h("span", { id, class: "field-error", role: "alert" });
  const url = h("input", { id: "wh-url", name: "url", type: "url", required: true, autocomplete: "off", spellcheck: "false",
    placeholder: "https://hooks.example.com/switchyard", "aria-describedby": "wh-url-help wh-url-error", class: "wide-input" });
  const secret = h("input", { id: "wh-secret", name: "secret", type: "text", required: true, autocomplete: "off", spellcheck: "false",
    minlength: "16", maxlength: "256", "aria-describedby": "wh-secret-help wh-secret-error", class: "wide-input" });
  const generate = h("button", { type: "button", class: "small" }, "Generate");
  generate.addEventListener("click", () => { secret.value = randomSecret(); secret.removeAttribute("aria-invalid"); });
  const eventBox = h("div", { class: "event-choices" });
  const events = h("fieldset", { class: "events-field", "aria-describedby": "wh-events-error" },
    h("legend", {}, "Events"), eventBox);
  const register = h("button", { type: "submit", class: "primary" }, "Register");
  const formErr = notice();
  const errors = { url: fieldErr("wh-url-error"), events: fieldErr("wh-events-error"), secret: fieldErr("wh-secret-error") };
  const form = h("form", { class: "card webhook-form", "aria-labelledby": "wh-form-title", novalidate: true },
    h("h2", { id: "wh-form-title" }, "Register a webhook"),
    h("div", { class: "field" }, h("label", { for: "wh-url" }, "URL"), url,
      h("p", { id: "wh-url-help", class: "help" }, "http or https, on a public address. Deliveries are POSTed here."), errors.url),
    events, errors.events,
    h("div", { class: "field" }, h("label", { for: "wh-secret" }, "Secret"), h("div", { class: "control-row" }, secret, generate),
      h("p", { id: "wh-secret-help", class: "help" }, "16 to 256 printable characters, no spaces: the key of each delivery's signature. Copy it now: it is never shown again."),
      errors.secret),
    formErr,
    h("div", { class: "actions" }, register));
  for (const c of [url, secret, generate, register]) c.disabled = !mayChange;
  if (mayChange) ctx.main.append(form);

  function drawChoices(types) {
    if (eventBox.childElementCount) return;
    fill(eventBox, ...types.map((t) => {
      const id = `wh-ev-${t === "*" ? "all" : t.replace(".", "-")}`;
      return h("span", { class: "choice" },
        h("input", { type: "checkbox", id, value: t, checked: DEFAULT_EVENTS.includes(t), disabled: !mayChange }),
        " ", h("label", { for: id, class: "inline" }, t === "*" ? "all events (*)" : t));
    }));
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    for (const [name, el] of Object.entries(errors)) { el.textContent = ""; (name === "events" ? events : name === "url" ? url : secret).removeAttribute("aria-invalid"); }
    formErr.show("");
    const chosen = [...eventBox.querySelectorAll("input:checked")].map((c) => c.value);
    register.disabled = true;
    try {
      const made = await post("/webhooks", { url: url.value.trim(), events: chosen, secret: secret.value });
      form.reset();
      for (const c of eventBox.querySelectorAll("input")) c.checked = DEFAULT_EVENTS.includes(c.value);
      formErr.show(`Registered: ${made.url}. It receives the events from now on.`, "info");
      await refresh();
    } catch (ex) {
      const field = ex.field && errors[ex.field] ? ex.field : null;
      if (ex.status === 422 && field) {
        errors[field].textContent = ex.message.replace(new RegExp(`^${field}: `), "");
        const el = field === "events" ? events : field === "url" ? url : secret;
        el.setAttribute("aria-invalid", "true");
        (field === "events" ? eventBox.querySelector("input") : el)?.focus();
      } else formErr.show(explain(ex));
    } finally {
      register.disabled = !mayChange;
    }
  });

  // --- the list --------------------------------------------------------------------------
  ctx.main.append(h("section", { class: "card", "aria-labelledby": "wh-list-title" },
    h("h2", { id: "wh-list-title" }, "Registered"),
    h("div", { class: "table-wrap" }, h("table", { class: "webhooks" },
      h("caption", { class: "visually-hidden" }, "Webhooks, newest first"),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "URL"), h("th", { scope: "col" }, "Events"),
        h("th", { scope: "col" }, "State"), h("th", { scope: "col", class: "wide" }, "Registered"),
        h("th", { scope: "col" }, "Controls"))),
      tbody))));

  let shown = "";
  function row(w) {
    const toggle = h("button", { type: "button", class: "small", "data-action": "toggle", disabled: !mayChange,
      "aria-label": `${w.paused ? "Resume" : "Pause"} ${w.url}` }, w.paused ? "Resume" : "Pause");
    const del = h("button", { type: "button", class: "small danger", "data-action": "delete", disabled: !mayChange,
      "aria-label": `Delete ${w.url}` }, "Delete");
    const rowErr = h("span", { class: "field-error", role: "alert" });
    toggle.addEventListener("click", () => act(rowErr, () => post(path(w.id, w.paused ? "/resume" : "/pause"))));
    del.addEventListener("click", () => {
      if (del.dataset.confirm !== "yes") { // a second click deletes: no dialog to dismiss
        del.dataset.confirm = "yes";
        del.textContent = "Confirm delete";
        del.setAttribute("aria-label", `Confirm: delete ${w.url} and its deliveries`);
        return;
      }
      act(rowErr, () => api("DELETE", path(w.id)));
    });
    return h("tr", { "data-webhook": w.id, "data-paused": String(w.paused) },
      h("th", { scope: "row", class: "url" }, h("span", { class: "mono" }, w.url),
        h("div", {}, h("a", { href: `#/webhooks/${w.id}` }, "Deliveries", h("span", { class: "visually-hidden" }, ` of ${w.url}`)))),
      h("td", {}, w.events.join(", ")),
      h("td", {}, h("span", { class: `badge ${w.paused ? "st-paused" : "st-active"}` }, w.paused ? "paused" : "active")),
      h("td", { class: "wide" }, timeEl(w.created_at)),
      h("td", { class: "controls" }, h("div", { class: "control-row" }, toggle, del), rowErr));
  }

  async function act(rowErr, call) {
    rowErr.textContent = "";
    try {
      await call();
      await refresh(true);
    } catch (ex) {
      rowErr.textContent = explain(ex);
    }
  }

  async function refresh(force = false) {
    try {
      const data = await get("/webhooks");
      if (ctx.signal.aborted) return;
      err.show("");
      drawChoices(data.event_types);
      const key = JSON.stringify(data.webhooks);
      if (!force && key === shown) return; // unchanged: keep the rows (and the focus)
      const at = document.activeElement?.closest?.("tr[data-webhook]");
      const focused = at ? [at.dataset.webhook, document.activeElement.dataset.action] : null;
      shown = key;
      fill(tbody, ...(data.webhooks.length ? data.webhooks.map(row)
        : [h("tr", {}, h("td", { colspan: "5", class: "muted" }, "No webhooks yet."))]));
      if (focused) tbody.querySelector(`tr[data-webhook="${focused[0]}"] [data-action="${focused[1]}"]`)?.focus();
    } catch (ex) {
      if (!ctx.signal.aborted) err.show(`Could not load webhooks: ${explain(ex)}`);
    }
  }

  await refresh();
  ctx.every(5000, refresh);
}

async function deliveriesPage(ctx, id) {
  ctx.title("Webhook deliveries");
  const mayChange = atLeast(ctx.app.me, "operator");
  const err = notice();
  const about = h("dl", { class: "facts" });
  const tbody = h("tbody");
  const more = h("button", { type: "button", hidden: true }, "Load more");
  ctx.main.append(
    h("p", { class: "crumbs" }, h("a", { href: "#/webhooks" }, "Webhooks"), " / ", h("span", { class: "mono" }, id)),
    h("h1", {}, "Webhook deliveries"),
    err,
    h("section", { class: "card", "aria-labelledby": "wh-about" }, h("h2", { id: "wh-about" }, "Webhook"), about),
    h("section", { class: "card", "aria-labelledby": "wh-deliveries" }, h("h2", { id: "wh-deliveries" }, "Deliveries"),
      h("p", { class: "help" }, "Newest event first. A delivery is tried until its endpoint answers 2xx; after the last try it is dead. Redeliver sends a dead or delivered one again, with the same delivery id."),
      h("div", { class: "table-wrap" }, h("table", { class: "deliveries" },
        h("caption", { class: "visually-hidden" }, "Deliveries of this webhook, newest first, with their attempts"),
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Event"), h("th", { scope: "col" }, "State"),
          h("th", { scope: "col", class: "num" }, "Tries"), h("th", { scope: "col" }, "Attempts"),
          h("th", { scope: "col", class: "wide" }, "Next try"), h("th", { scope: "col" }, "Actions"))),
        tbody)),
      more));

  let loaded = [];
  let cursor = null;
  let shown = "";

  function attempts(d) {
    if (!d.attempts.length) return h("span", { class: "muted" }, "none yet");
    return h("ol", { class: "attempts" }, d.attempts.map((a) => h("li", { class: a.error ? "failed" : "ok" },
      h("time", { datetime: a.at }, fmtClock(a.at)), " · ",
      a.status_code != null ? h("span", { class: "code" }, String(a.status_code)) : null,
      a.error && a.error !== `HTTP ${a.status_code}` ? h("span", { class: "error-line" }, `${a.status_code != null ? " " : ""}${a.error}`) : null,
      ` · ${fmtDuration(a.duration_ms)}`)));
  }

  function row(d) {
    const ev = d.event || {};
    const link = ev.job_id ? h("a", { href: `#/jobs/${ev.job_id}` }, "job") : ev.workflow_id ? h("a", { href: `#/workflows/${ev.workflow_id}` }, "workflow") : null;
    const rowErr = h("span", { class: "field-error", role: "alert" });
    const canRedeliver = d.state === "dead" || d.state === "delivered";
    const redeliver = canRedeliver ? h("button", { type: "button", class: "small", "data-action": "redeliver", disabled: !mayChange,
      "aria-label": `Redeliver ${d.event_type} (event ${d.seq})` }, "Redeliver") : null;
    redeliver?.addEventListener("click", async () => {
      rowErr.textContent = "";
      redeliver.disabled = true;
      try {
        await post(path(id, `/deliveries/${encodeURIComponent(d.id)}/redeliver`));
        await refresh(true);
      } catch (ex) {
        rowErr.textContent = explain(ex);
        redeliver.disabled = !mayChange;
      }
    });
    return h("tr", { "data-delivery": d.id, "data-state": d.state },
      h("th", { scope: "row" }, h("span", { class: "ev-type" }, d.event_type), h("div", { class: "muted small" }, `event ${d.seq}`, link ? " · " : "", link)),
      h("td", {}, stateBadge(d.state)),
      h("td", { class: "num" }, String(d.tries)),
      h("td", {}, attempts(d)),
      h("td", { class: "wide" }, d.state === "pending" ? timeEl(d.next_attempt_at) : d.delivered_at ? ["delivered ", timeEl(d.delivered_at)] : "—"),
      h("td", {}, redeliver, rowErr));
  }

  async function refresh(force = false) {
    try {
      const [hook, page] = await Promise.all([get(path(id)), get(`${path(id, "/deliveries")}${qs({ limit: Math.max(20, Math.min(200, loaded.length)) })}`)]);
      if (ctx.signal.aborted) return;
      err.show("");
      fill(about, ...[["URL", h("span", { class: "mono" }, hook.url)], ["Events", hook.events.join(", ")],
        ["State", h("span", { class: `badge ${hook.paused ? "st-paused" : "st-active"}` }, hook.paused ? "paused" : "active")],
        ["Registered", timeEl(hook.created_at)]].flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
      loaded = page.deliveries; // as many as were shown: "Load more" raised the count
      cursor = page.next_cursor;
      more.hidden = cursor == null;
      draw(force);
    } catch (ex) {
      if (!ctx.signal.aborted) err.show(ex.status === 404 ? "No such webhook (or not yours to see)." : `Could not load deliveries: ${explain(ex)}`);
    }
  }

  function draw(force) {
    const key = JSON.stringify(loaded);
    if (!force && key === shown) return;
    shown = key;
    const focusedRow = document.activeElement?.closest?.("tr[data-delivery]")?.dataset.delivery;
    fill(tbody, ...(loaded.length ? loaded.map(row) : [h("tr", {}, h("td", { colspan: "6", class: "muted" }, "No deliveries yet."))]));
    if (focusedRow) tbody.querySelector(`tr[data-delivery="${focusedRow}"] button`)?.focus();
  }

  more.addEventListener("click", async () => {
    try {
      const page = await get(`${path(id, "/deliveries")}${qs({ cursor, limit: Math.min(50, 200 - loaded.length) || 1 })}`);
      loaded = loaded.concat(page.deliveries);
      cursor = page.next_cursor;
      more.hidden = cursor == null;
      draw(true);
    } catch (ex) {
      err.show(explain(ex));
    }
  });
  await refresh();
  ctx.every(2000, refresh);
}
