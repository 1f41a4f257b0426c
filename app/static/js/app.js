// The dashboard's entry point: sign-in, the hash router (#/jobs/ID, #/workflows/ID,
// #/approvals/ID/KEY: the links in notification emails), the live connection shared by every
// page, and the bell.

import { h, clear, notice } from "./dom.js";
import { session, checkToken, whenUnauthorized, explain, serverNow } from "./api.js";
import { Live } from "./live.js";
import { Stats } from "./stats.js";
import { Notifications, bell } from "./bell.js";
import * as overview from "./pages/overview.js";
import * as jobs from "./pages/jobs.js";
import * as job from "./pages/job.js";
import * as workflows from "./pages/workflows.js";
import * as workflow from "./pages/workflow.js";
import * as submit from "./pages/submit.js";
import * as queues from "./pages/queues.js";
import * as notifications from "./pages/notifications.js";
import * as webhooks from "./pages/webhooks.js";
import * as inbox from "./pages/inbox.js";

const ID = "([0-9a-f]{24})";
const ROUTES = [
  [/^\/$/, overview, "overview"],
  [/^\/jobs\/?$/, jobs, "jobs"],
  [new RegExp(`^/jobs/${ID}$`), job, "jobs"],
  [/^\/workflows\/?$/, workflows, "workflows"],
  [new RegExp(`^/workflows/${ID}$`), workflow, "workflows"],
  [/^\/submit$/, submit, "submit"],
  [/^\/queues$/, queues, "queues"],
  [/^\/notifications$/, notifications, "notifications"],
  [/^\/webhooks\/?$/, webhooks, "webhooks"],
  [new RegExp(`^/webhooks/${ID}$`), webhooks, "webhooks"],
  [new RegExp(`^/approvals(?:/${ID}/([A-Za-z0-9_][A-Za-z0-9_-]{0,63}))?$`), inbox, "approvals"], // "Needs action"
];

// Shared by the pages while signed in.
export const app = { live: null, stats: null, notes: null, me: null };
let leave = null; // ends the current page (its listeners, timers, sockets)
let lastPath = null;
let signedInScope = null; // ends what a sign-in started

const $ = (sel) => document.querySelector(sel);

function signedIn(yes) {
  document.body.classList.toggle("signed-in", yes);
  $(".mainnav").hidden = !yes;
  $(".tools").hidden = !yes;
}

function showSignIn(message) {
  leave?.();
  leave = null;
  lastPath = null;
  signedIn(false);
  document.title = "Sign in · Switchyard";
  const main = clear($("#main"));
  const err = notice();
  const input = h("input", {
    id: "token", name: "token", type: "password", required: true, autocomplete: "off", spellcheck: "false",
    "aria-describedby": "token-help token-error",
  });
  err.id = "token-error";
  const button = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h("form", { class: "signin card", "aria-labelledby": "signin-title", novalidate: true },
    h("h1", { id: "signin-title", tabindex: "-1" }, "Sign in to Switchyard"),
    h("label", { for: "token" }, "API token"),
    input,
    h("p", { id: "token-help", class: "help" },
      "The admin token is printed by ./scripts/run and kept in .switchyard/admin_token (or set with SWITCHYARD_ADMIN_TOKEN). ",
      "It is kept in this tab's session storage only, until you sign out or close the tab."),
    err,
    button);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const token = input.value.trim();
    if (!token) { err.show("Enter a token."); input.setAttribute("aria-invalid", "true"); input.focus(); return; }
    button.disabled = true;
    button.textContent = "Checking…";
    const res = await checkToken(token);
    button.disabled = false;
    button.textContent = "Sign in";
    if (!res.ok) {
      input.setAttribute("aria-invalid", "true");
      err.show(res.error.status === 401
        ? "The server refused this token (401 Unauthorized). Check it and try again."
        : `Could not sign in: ${explain(res.error)}`);
      input.select();
      input.focus();
      return;
    }
    session.set(token);
    start(res.me);
  });
  main.append(form);
  if (message) err.show(message);
  input.focus();
}

function signOut(message) {
  session.clear();
  signedInScope?.abort();
  signedInScope = null;
  app.live?.stop();
  app.live = null;
  app.me = null;
  showSignIn(message);
}

async function start(me) {
  const token = session.token;
  if (!me) { // a tab reloaded with a token in session storage: who is it?
    const res = await checkToken(token);
    if (!res.ok) {
      if (res.error.status === 401) return signOut("The server no longer accepts this token. Sign in again.");
      return showSignIn(`Could not reach the server: ${explain(res.error)}`);
    }
    me = res.me;
  }
  app.me = me;
  const who = $("#who");
  who.textContent = `${me.user} · ${me.role}`;
  who.title = `signed in as ${me.user} (${me.role}${me.global_admin ? ", every tenant" : `, tenant ${me.tenant}`})`;
  signedIn(true);
  const live = new Live(token, [{ all: true }, { notifications: true }]);
  const stats = new Stats();
  const notes = new Notifications();
  Object.assign(app, { live, stats, notes });
  const state = $("#live-state");
  live.addEventListener("state", (e) => {
    state.dataset.state = e.detail;
    state.textContent = { live: "Live", connecting: "Connecting…", offline: "Offline" }[e.detail];
    state.title = e.detail === "live" ? "Receiving live events over the WebSocket" : "Not connected: reconnecting";
  });
  live.addEventListener("event", (e) => stats.onEvent(e.detail));
  live.addEventListener("notification", (e) => notes.onLive(e.detail));
  live.addEventListener("resync", () => notes.load().catch(() => {}));
  live.addEventListener("unauthorized", () => { if (app.live === live) signOut("The server no longer accepts this token. Sign in again."); });
  live.start();
  signedInScope = new AbortController();
  bell(notes, $("#bell"), $("#bell-panel"), signedInScope.signal);
  notes.load().catch(() => {});
  stats.seed(serverNow()).catch(() => {});
  route();
}

async function route() {
  if (!session.token) return showSignIn();
  const raw = decodeURIComponent(location.hash.replace(/^#/, "")) || "/";
  if (!raw.startsWith("/")) return; // an in-page anchor
  const [path, query] = raw.split("?");
  let match = null, page = null, nav = null;
  for (const [re, mod, n] of ROUTES) {
    match = path.match(re);
    if (match) { page = mod; nav = n; break; }
  }
  leave?.();
  const ac = new AbortController();
  leave = () => ac.abort();
  const main = clear($("#main"));
  for (const a of document.querySelectorAll(".mainnav a")) {
    if (a.dataset.nav === nav) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  const moved = path !== lastPath;
  lastPath = path;
  if (!page) {
    document.title = "Not found · Switchyard";
    main.append(h("h1", { tabindex: "-1" }, "Not found"), h("p", {}, "No page here. ", h("a", { href: "#/" }, "Back to the overview.")));
    return;
  }
  const ctx = {
    main, app, params: match.slice(1), query: new URLSearchParams(query || ""), signal: ac.signal,
    on(target, type, fn) { target.addEventListener(type, fn, { signal: ac.signal }); },
    onLeave(fn) { ac.signal.addEventListener("abort", fn); },
    every(ms, fn) { const t = setInterval(fn, ms); ac.signal.addEventListener("abort", () => clearInterval(t)); },
    title(t) { document.title = `${t} · Switchyard`; },
  };
  try {
    await page.render(ctx);
  } catch (e) {
    if (ac.signal.aborted) return;
    main.append(h("div", { class: "notice error", role: "alert" }, `This page could not load: ${explain(e)}`));
  }
  if (moved && !ac.signal.aborted) {
    const h1 = main.querySelector("h1");
    if (h1) { h1.tabIndex = -1; h1.focus({ preventScroll: true }); }
  }
}

function boot() {
  whenUnauthorized(() => signOut("The server refused the token (401): it may have changed. Sign in again."));
  $("#signout").addEventListener("click", () => signOut());
  $("#skip").addEventListener("click", (e) => { e.preventDefault(); $("#main").focus(); });
  window.addEventListener("hashchange", route);
  if (session.token) start(); else showSignIn();
}

boot();
