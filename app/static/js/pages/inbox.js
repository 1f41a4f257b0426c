// "Needs action": the approvals waiting for the signed-in user, oldest first
// (GET /api/v1/approvals), each with what it is about (the results of the steps it depends
// on, cut to a preview; images in data: URLs are shown) and Approve / Reject with a comment.
// #/approvals/<workflow>/<step>, the link in approval emails, puts that approval first and
// focuses it. Re-read (at most every 0.5 s) when a step of a listed workflow moves, when a
// step starts to await, or when an approval request arrives over the WebSocket.

import { get, explain } from "../api.js";
import { h, fill, notice, throttle, timeEl, fmtTime, pre } from "../dom.js";
import { decideForm } from "../approve.js";

function images(value) {
  const found = [];
  const walk = (v, path) => {
    if (typeof v === "string" && v.startsWith("data:image/")) found.push([path, v]);
    else if (Array.isArray(v)) v.forEach((x, i) => walk(x, `${path}[${i}]`));
    else if (v && typeof v === "object") for (const [k, x] of Object.entries(v)) walk(x, path ? `${path}.${k}` : k);
  };
  walk(value, "");
  return found;
}

/** One parent's result: its images, then the value (as text when it is text). */
function about(key, value) {
  const pics = images(value);
  const shown = typeof value === "string" && !value.startsWith("data:image/")
    ? h("pre", { class: "json", tabindex: "0" }, value)
    : pre(JSON.parse(JSON.stringify(value ?? null, (k, v) => (typeof v === "string" && v.startsWith("data:image/") ? "[image, shown above]" : v))));
  return h("div", { class: "about" },
    h("h3", {}, key),
    pics.map(([path, src]) => h("img", { src, alt: `${key}${path ? ` ${path}` : ""} (image result)`, class: "result-image" })),
    shown);
}

export async function render(ctx) {
  ctx.title("Needs action");
  const [wantWf, wantKey] = ctx.params;
  const err = notice();
  const gone = notice("info");
  const said = h("p", { class: "muted", role: "status" });
  const list = h("ul", { class: "approval-list" });
  ctx.main.append(
    h("div", { class: "page-head" }, h("h1", {}, "Needs action")),
    h("p", { class: "lede" }, "Approvals that wait for your decision. Approving completes the step and the workflow goes on; rejecting fails it."),
    gone, err, said, list);

  let items = [];
  let focused = false;
  const decided = new Set(); // "wf/key" decided here: kept off the list until the API agrees

  function card(a) {
    const id = `appr-${a.workflow_id}-${a.step_key}`;
    const deadline = a.until ? ` · if nobody decides by ${fmtTime(a.until)}: ${a.on_timeout}` : "";
    return h("li", { class: "approval card", "data-workflow": a.workflow_id, "data-step": a.step_key, "aria-labelledby": `${id}-h` },
      h("h2", { id: `${id}-h`, tabindex: "-1" }, `${a.step_key} of `, h("a", { href: `#/workflows/${a.workflow_id}` }, a.workflow_name || a.workflow_id)),
      h("p", { class: "muted small" }, "waiting since ", timeEl(a.waiting_since), deadline, ` · approvers: ${a.approvers.join(", ")}`),
      Object.keys(a.parents).length
        ? h("section", { class: "abouts", "aria-label": `What ${a.step_key} is about` },
          Object.entries(a.parents).map(([k, v]) => about(k, v)),
          a.truncated ? h("p", { class: "help" }, "Long results are cut here; the whole result is on the step's job page.") : null)
        : h("p", { class: "muted" }, "It depends on no step's result."),
      decideForm(a.workflow_id, a.step_key, {
        name: `${a.step_key} of ${a.workflow_name}`,
        onDone: (out) => {
          decided.add(`${a.workflow_id}/${a.step_key}`);
          said.textContent = out ? `${out.decision.decision === "approved" ? "Approved" : "Rejected"} ${a.step_key} of ${a.workflow_name}.` : "";
          refresh();
        },
      }));
  }

  const cards = new Map(); // "wf/key" -> its card, kept across re-reads (a comment being typed stays)

  function draw() {
    const shown = items.filter((a) => !decided.has(`${a.workflow_id}/${a.step_key}`));
    if (wantWf) shown.sort((a, b) => (b.workflow_id === wantWf && b.step_key === wantKey) - (a.workflow_id === wantWf && a.step_key === wantKey));
    const keep = new Set(shown.map((a) => `${a.workflow_id}/${a.step_key}`));
    for (const k of [...cards.keys()]) if (!keep.has(k)) cards.delete(k);
    const els = shown.map((a) => {
      const k = `${a.workflow_id}/${a.step_key}`;
      if (!cards.has(k)) cards.set(k, card(a));
      return cards.get(k);
    });
    fill(list, ...(els.length ? els : [h("li", { class: "muted empty" }, "Nothing needs your action.")]));
    if (wantWf && !focused) {
      focused = true;
      const target = list.querySelector(`li[data-workflow="${wantWf}"][data-step="${wantKey}"] h2`);
      if (target) setTimeout(() => target.focus(), 0);
      else gone.show("That approval no longer waits for you: it was decided, timed out or cancelled, or it is not yours to decide.");
    }
  }

  async function load() {
    try {
      const page = await get("/approvals");
      if (ctx.signal.aborted) return;
      err.show("");
      items = page.approvals;
      for (const k of [...decided]) if (!items.some((a) => `${a.workflow_id}/${a.step_key}` === k)) decided.delete(k);
      draw();
    } catch (e) {
      if (!ctx.signal.aborted) err.show(`Could not load your approvals: ${explain(e)}`);
    }
  }

  const refresh = throttle(load, 500);
  ctx.onLeave(() => refresh.cancel());
  ctx.on(ctx.app.live, "event", (ev) => {
    const e = ev.detail;
    if (e.kind !== "job" || e.type === "job.progress") return;
    if (e.status === "awaiting" || items.some((a) => a.workflow_id === e.workflow_id)) refresh();
  });
  ctx.on(ctx.app.live, "notification", (ev) => { if (ev.detail.event_type === "approval.requested") refresh(); });
  ctx.on(ctx.app.live, "resync", () => refresh());
  await load();
}
