// The limits editor of one engine, for the deployment's admin only (the API answers anyone
// else 403): PUT /api/v1/jobs/queue/{name}/limits with the fields changed and nothing else,
// since a field left out is kept (docs/limits.md). The concurrency limit, the rate limit and
// its burst; and, on a server whose queue status carries them, the per-key limits (`key`,
// `key_rate`, `key_burst`, `key_concurrency`) and the tenants' weights. A field is shown only
// when the status has it, so this works against servers with and without per-key limits.
// A 422 is shown beside the field it names (each entry of `errors` too); a weight's beside
// that tenant's weight (`weights.<tenant>`, as the field or in the message), anything else
// above the buttons.

import { put, explain } from "./api.js";
import { h, fill } from "./dom.js";

// nullable: an empty input sends null (clears the limit); otherwise it leaves the field out.
const FIELDS = [
  { name: "max_concurrent_jobs", label: "Concurrency", int: true, help: "jobs running at once, across every worker and tenant" },
  { name: "rate", label: "Rate", nullable: true, help: "starts per period across every worker: 30/s, 60/min or 1000/h; empty: none" },
  { name: "burst", label: "Burst", int: true, help: "starts allowed at once; needs a rate" },
  { name: "key", label: "Limit key", nullable: true, keyed: true, help: "tenant, owner or params.<path>; empty clears every per-key limit" },
  { name: "key_rate", label: "Rate per key", nullable: true, keyed: true, help: "starts per period for each key; empty: none" },
  { name: "key_burst", label: "Burst per key", int: true, keyed: true, help: "needs a rate per key" },
  { name: "key_concurrency", label: "Concurrency per key", int: true, nullable: true, keyed: true, help: "jobs running at once for each key; empty: none" },
];

/** The editor's element for engine `q`, and `show(q)` to load a queue status into it;
 * `onSaved(q)` gets the engine's status as the PUT answered it. */
export function limitsEditor(q, { onSaved }) {
  const base = `lim-${q.name}`;
  const inputs = new Map(); // field name -> {input, err, field}
  const weightRows = new Map(); // tenant -> {input, err}
  const formErr = h("p", { class: "field-error", role: "alert", id: `${base}-error` });
  const status = h("p", { class: "help", role: "status" });
  const save = h("button", { type: "submit", class: "small primary" }, "Save limits");
  const engineSet = h("fieldset", {}, h("legend", {}, "The whole engine"));
  const keySet = h("fieldset", {}, h("legend", {}, "Per key (within each tenant)"));
  const weightList = h("div", { class: "weights" });
  const newTenant = h("input", { id: `${base}-new-tenant`, class: "limits-input", autocomplete: "off", spellcheck: "false" });
  const newWeight = h("input", { id: `${base}-new-weight`, class: "limits-input", type: "number", min: "0", step: "any", inputmode: "decimal" });
  const newErr = h("span", { class: "field-error", id: `${base}-new-error`, role: "alert" });
  const weightsErr = h("span", { class: "field-error", id: `${base}-weights-error`, role: "alert" });
  const weightSet = h("fieldset", {}, h("legend", {}, "Tenants' weights (shares of the engine's claims; default 1)"),
    weightsErr, weightList,
    h("div", { class: "limits-field" }, h("label", { for: newTenant.id }, "Add a tenant"), newTenant),
    h("div", { class: "limits-field" }, h("label", { for: newWeight.id }, "Its weight"), newWeight, newErr));
  for (const f of FIELDS) {
    const id = `${base}-${f.name}`;
    const err = h("span", { class: "field-error", id: `${id}-error`, role: "alert" });
    const input = h("input", f.int
      ? { id, class: "limits-input", type: "number", min: "1", step: "1", inputmode: "numeric" }
      : { id, class: "limits-input", type: "text", autocomplete: "off", spellcheck: "false" });
    input.setAttribute("aria-describedby", `${id}-help ${id}-error`);
    const wrap = h("div", { class: "limits-field", "data-field": f.name },
      h("label", { for: id }, f.label), input, h("span", { class: "help", id: `${id}-help` }, f.help), err);
    (f.keyed ? keySet : engineSet).append(wrap);
    inputs.set(f.name, { input, err, field: f, wrap });
  }
  const form = h("form", { class: "limits-form", "aria-label": `Limits of ${q.name}`, novalidate: true },
    engineSet, keySet, weightSet, formErr, h("div", { class: "control-row" }, save, status));
  let current = q;

  function show(next) {
    current = next;
    for (const { input, field, wrap } of inputs.values()) {
      wrap.hidden = !(field.name in next); // a server without per-key limits has no such field
      input.value = next[field.name] ?? "";
    }
    keySet.hidden = FIELDS.every((f) => !f.keyed || !(f.name in next));
    weightSet.hidden = !("weights" in next);
    weightRows.clear();
    fill(weightList, ...Object.entries(next.weights || {}).sort(([a], [b]) => a.localeCompare(b)).map(([tenant, w]) => {
      const id = `${base}-w-${tenant}`;
      const input = h("input", { id, class: "limits-input", type: "number", min: "0", step: "any", inputmode: "decimal", value: String(w),
        "aria-describedby": `${id}-error` });
      const err = h("span", { class: "field-error", id: `${id}-error`, role: "alert" });
      weightRows.set(tenant, { input, err });
      return h("div", { class: "limits-field", "data-tenant": tenant }, h("label", { for: id }, `Weight of ${tenant}`), input,
        h("span", { class: "help" }, "empty: back to 1"), err);
    }));
    newTenant.value = newWeight.value = "";
    clearErrors();
  }

  function clearErrors() {
    for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  }

  function mark(input, err, message) {
    err.textContent = message;
    input?.setAttribute("aria-invalid", "true");
  }

  /** The fields changed from `current`, as the PUT's body; problems found here, by field. */
  function changes() {
    const body = {}, bad = [];
    for (const { input, field, wrap } of inputs.values()) {
      if (wrap.hidden) continue;
      const raw = input.value.trim();
      const was = current[field.name] ?? null;
      if (field.int && (input.validity.badInput || (raw && !/^\d+$/.test(raw)))) { bad.push([field.name, "A whole number."]); continue; }
      let value = raw === "" ? null : field.int ? Number(raw) : raw;
      if (value === null && !field.nullable) continue; // cannot be cleared: left as it is
      if (value !== was) body[field.name] = value;
    }
    // An emptied key clears every per-key limit: the other per-key fields, whatever they
    // hold, are not sent with it (the API refuses a per-key limit on an engine with no key).
    if (body.key === null) for (const f of FIELDS) if (f.keyed && f.name !== "key") delete body[f.name];
    if (!weightSet.hidden) {
      const weights = {};
      for (const [tenant, { input }] of weightRows) {
        const raw = input.value.trim();
        if (input.validity.badInput) { bad.push([`weights.${tenant}`, "A number above 0."]); continue; }
        const value = raw === "" ? null : Number(raw);
        if (value !== (current.weights || {})[tenant]) weights[tenant] = value;
      }
      const name = newTenant.value.trim();
      if (name || newWeight.value.trim()) {
        if (!name || newWeight.value.trim() === "") bad.push(["new", "Give the tenant and its weight."]);
        else weights[name] = Number(newWeight.value);
      }
      if (Object.keys(weights).length) body.weights = weights;
    }
    return { body, bad };
  }

  /** Where an error about `field` goes: its input, a tenant's weight, or the form. */
  function place(field, message) {
    if (inputs.has(field)) return mark(inputs.get(field).input, inputs.get(field).err, message);
    // The API names a bad weight in its message ("weights.acme: ...") or in the field.
    const named = field === "weights" ? /weights\.([A-Za-z0-9_-]+):/.exec(message || "") : null;
    if (named) field = `weights.${named[1]}`;
    if (field === "weights") return mark(null, weightsErr, message);
    if (field?.startsWith("weights.")) {
      const tenant = field.slice("weights.".length);
      if (weightRows.has(tenant)) return mark(weightRows.get(tenant).input, weightRows.get(tenant).err, message);
      if (tenant === newTenant.value.trim()) return mark(newWeight, newErr, message);
      return mark(null, weightsErr, message);
    }
    formErr.textContent = formErr.textContent ? `${formErr.textContent} ${message}` : message;
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearErrors();
    status.textContent = "";
    const { body, bad } = changes();
    for (const [field, message] of bad) field === "new" ? mark(newWeight, newErr, message) : place(field, message);
    if (bad.length) return;
    if (!Object.keys(body).length) { status.textContent = "Nothing changed."; return; }
    save.disabled = true;
    try {
      const q = await put(`/jobs/queue/${encodeURIComponent(current.name)}/limits`, body);
      show(q);
      status.textContent = "Saved.";
      onSaved(q);
    } catch (err) {
      if (err.status === 422 && err.errors?.length) for (const x of err.errors) place(x.field, x.reason);
      else if (err.status === 422) place(err.field, err.message);
      else formErr.textContent = explain(err);
    } finally {
      save.disabled = false;
    }
  });

  show(q);
  return { el: form, show, get current() { return current; } };
}
