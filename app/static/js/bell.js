// The notifications bell in the header: the unread count and the latest notifications,
// from GET /api/v1/jobs/notifications, kept current by the WebSocket's `notification`
// messages (same ids as the stored ones, so one notification is never listed twice).

import { get, post, explain } from "./api.js";
import { h, clear, fill, timeEl, statusBadge, notice } from "./dom.js";

const SHOWN = 20;

export class Notifications extends EventTarget {
  constructor() {
    super();
    this.items = new Map(); // id -> notification, newest first by seq
    this.unread = 0;
  }

  async load() {
    const page = await get(`/jobs/notifications?limit=${SHOWN}`);
    this.items = new Map(page.notifications.map((n) => [n.id, n]));
    this.unread = page.unread_count;
    this.changed();
  }

  onLive(msg) {
    if (this.items.has(msg.id)) return;
    this.items.set(msg.id, {
      id: msg.id, type: msg.event_type, title: msg.title, status: msg.status, job_id: msg.job_id,
      workflow_id: msg.workflow_id, step_key: msg.step_key, read: false, seq: msg.seq, created_at: new Date().toISOString(),
    });
    this.unread += 1;
    this.changed();
  }

  list() {
    return [...this.items.values()].sort((a, b) => b.seq - a.seq).slice(0, SHOWN);
  }

  async markRead(id) {
    const n = await post(`/jobs/notifications/${encodeURIComponent(id)}/read`);
    const had = this.items.get(id);
    if (had && !had.read) this.unread = Math.max(0, this.unread - 1);
    this.items.set(id, n);
    this.changed();
    this.dispatchEvent(new CustomEvent("read", { detail: id }));
  }

  async markAll() {
    await post("/jobs/notifications/read-all");
    for (const n of this.items.values()) n.read = true;
    this.unread = 0;
    this.changed();
    this.dispatchEvent(new CustomEvent("read", { detail: "*" }));
  }

  changed() { this.dispatchEvent(new Event("change")); }
}

export function notificationLink(n) {
  if (n.type === "approval.requested" && n.workflow_id && n.step_key) return `#/approvals/${n.workflow_id}/${n.step_key}`;
  if (n.job_id) return `#/jobs/${n.job_id}`;
  if (n.workflow_id) return `#/workflows/${n.workflow_id}`;
  return null;
}

/** One notification as a list item with its "Mark read" button. */
export function notificationItem(n, store, onError) {
  const href = notificationLink(n);
  const title = href ? h("a", { href }, n.title) : h("span", {}, n.title);
  return h("li", { class: `notification${n.read ? "" : " unread"}`, "data-id": n.id },
    h("div", { class: "n-main" }, n.status ? statusBadge(n.status) : null, " ", title),
    h("div", { class: "n-meta" }, timeEl(n.created_at), n.read ? h("span", { class: "muted" }, " · read") : null),
    n.read ? null : h("button", {
      type: "button", class: "small", "aria-label": `Mark read: ${n.title}`,
      onclick: (e) => { e.currentTarget.disabled = true; store.markRead(n.id).catch(onError); },
    }, "Mark read"));
}

/** Wires the header's bell button and its panel. */
export function bell(store, button, panel, signal) {
  const opt = { signal };
  const count = button.querySelector(".count");
  const list = h("ul", { class: "notification-list", "aria-label": "Latest notifications" });
  const err = notice();
  const markAll = h("button", { type: "button", class: "small", onclick: () => store.markAll().catch(fail) }, "Mark all read");
  const head = h("div", { class: "panel-head" }, h("h2", { id: "bell-title" }, "Notifications"), markAll);
  fill(panel, head, err, list, h("p", { class: "panel-foot" }, h("a", { href: "#/notifications" }, "All notifications")));
  panel.setAttribute("aria-labelledby", "bell-title");

  function fail(e) { err.show(explain(e)); }

  function render() {
    count.textContent = store.unread > 99 ? "99+" : String(store.unread);
    count.hidden = store.unread === 0;
    button.setAttribute("aria-label", `Notifications, ${store.unread} unread`);
    markAll.disabled = store.unread === 0;
    const items = store.list();
    fill(list, ...(items.length ? items.map((n) => notificationItem(n, store, fail)) : [h("li", { class: "muted empty" }, "No notifications yet.")]));
  }

  function open(show) {
    panel.hidden = !show;
    button.setAttribute("aria-expanded", String(show));
    if (show) { err.show(""); (panel.querySelector("button:not([disabled]), a") || panel).focus(); }
  }

  button.addEventListener("click", () => open(panel.hidden), opt);
  panel.addEventListener("keydown", (e) => { if (e.key === "Escape") { open(false); button.focus(); } }, opt);
  document.addEventListener("click", (e) => {
    if (!panel.hidden && e.target.isConnected && !panel.contains(e.target) && !button.contains(e.target)) open(false);
  }, opt);
  panel.addEventListener("click", (e) => { if (e.target.closest("a")) open(false); }, opt);
  window.addEventListener("hashchange", () => open(false), opt);
  signal.addEventListener("abort", () => open(false));
  store.addEventListener("change", render);
  render();
  return { open, render };
}
