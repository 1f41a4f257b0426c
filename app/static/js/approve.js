// An approval's decision: an optional comment and Approve / Reject, posted to
// POST /api/v1/jobs/workflows/{id}/steps/{key}/approve or /reject (docs/waiting-steps.md).
// Used by the "Needs action" inbox and by a workflow's page. A 409 means someone (or the
// timeout) decided first: the buttons stay disabled and the page re-reads.

import { post, explain } from "./api.js";
import { h, notice } from "./dom.js";

let made = 0;

/** The form for one awaiting approval; `onDone(out)` after the API answered (or 409). */
export function decideForm(workflowId, key, { name = key, onDone } = {}) {
  const id = `decide-${++made}`;
  const comment = h("textarea", { id: `${id}-comment`, name: "comment", rows: "2", maxlength: "2000", class: "decide-comment" });
  const msg = notice();
  const approve = h("button", { type: "button", class: "primary", "data-verb": "approve" }, "Approve");
  const reject = h("button", { type: "button", class: "danger", "data-verb": "reject" }, "Reject");
  const form = h("form", { class: "decide", "aria-label": `Decide ${name}`, onsubmit: (e) => e.preventDefault() },
    h("label", { for: comment.id }, "Comment (optional)"), comment,
    h("div", { class: "actions" }, approve, reject), msg);

  async function decide(verb) {
    approve.disabled = reject.disabled = true;
    msg.show("");
    const text = comment.value.trim();
    try {
      const out = await post(`/jobs/workflows/${workflowId}/steps/${encodeURIComponent(key)}/${verb}`, text ? { comment: text } : {});
      msg.show(out.decision.decision === "approved" ? "Approved: the workflow goes on." : "Rejected: the step failed.", "info");
      onDone?.(out);
    } catch (e) {
      if (e.status === 409) {
        msg.show("It no longer waits for a decision: someone decided first, or it timed out.", "info");
        onDone?.(null);
        return;
      }
      msg.show(explain(e), "error");
      approve.disabled = reject.disabled = false;
    }
  }
  approve.addEventListener("click", () => decide("approve"));
  reject.addEventListener("click", () => decide("reject"));
  return form;
}
