// All of the caller's notifications: GET /api/v1/jobs/notifications?unread=&cursor=&limit=,
// newest first, with "Load more"; mark one read (POST .../{id}/read) or all
// (POST .../read-all). New ones arrive over the WebSocket, as in the bell.

import { get, qs, explain } from "../api.js";
import { h, clear, fill, notice } from "../dom.js";
import { notificationItem } from "../bell.js";

export async function render(ctx) {
  ctx.title("Notifications");
  const notes = ctx.app.notes;
  const unreadOnly = ctx.query.get("unread") === "true";
  const err = notice();
  const list = h("ul", { class: "notification-list full" });
  const more = h("button", { type: "button", hidden: true }, "Load more");
  const markAll = h("button", { type: "button" }, "Mark all read");
  const toggle = h("input", { type: "checkbox", id: "unread-only", checked: unreadOnly });
  toggle.addEventListener("change", () => { location.hash = `#/notifications${toggle.checked ? "?unread=true" : ""}`; });
  const count = h("p", { class: "muted", role: "status" });
  ctx.main.append(
    h("div", { class: "page-head" }, h("h1", {}, "Notifications"), h("div", { class: "actions" }, markAll)),
    h("p", { class: "filters" }, toggle, " ", h("label", { for: "unread-only", class: "inline" }, "Unread only")),
    count, err, list, more);

  let items = [];
  let cursor = null;
  const fail = (e) => err.show(explain(e));

  function draw() {
    count.textContent = `${notes.unread} unread.`;
    markAll.disabled = notes.unread === 0;
    fill(list, ...(items.length ? items.map((n) => notificationItem(n, notes, fail)) : [h("li", { class: "muted empty" }, "Nothing here.")]));
  }

  async function load(next) {
    try {
      const page = await get(`/jobs/notifications${qs({ unread: unreadOnly ? "true" : "", cursor: next, limit: 50 })}`);
      if (ctx.signal.aborted) return;
      items = next ? items.concat(page.notifications) : page.notifications;
      cursor = page.next_cursor;
      more.hidden = cursor === null || cursor === undefined;
      notes.unread = page.unread_count;
      notes.changed();
      draw();
    } catch (e) {
      if (!ctx.signal.aborted) fail(e);
    }
  }

  markAll.addEventListener("click", () => notes.markAll().catch(fail));
  more.addEventListener("click", () => load(cursor));
  ctx.on(notes, "read", (e) => {
    if (e.detail === "*") for (const n of items) n.read = true;
    else { const i = items.findIndex((n) => n.id === e.detail); if (i >= 0) items[i] = notes.items.get(e.detail) || { ...items[i], read: true }; }
    draw();
  });
  ctx.on(ctx.app.live, "notification", (e) => {
    const m = e.detail;
    if (items.some((n) => n.id === m.id)) return;
    items.unshift(notes.items.get(m.id) || { id: m.id, title: m.title, status: m.status, job_id: m.job_id, workflow_id: m.workflow_id, read: false, seq: m.seq, created_at: new Date().toISOString() });
    draw();
  });
  ctx.on(notes, "change", () => { count.textContent = `${notes.unread} unread.`; markAll.disabled = notes.unread === 0; });
  await load(null);
}
