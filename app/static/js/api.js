// The REST API client: every call carries the bearer token from session storage; errors
// come back as ApiError with the API's {"error": {code, message, field}} fields.

const KEY = "switchyard.token";

export const session = {
  get token() { return sessionStorage.getItem(KEY); },
  set(token) { sessionStorage.setItem(KEY, token); },
  clear() { sessionStorage.removeItem(KEY); },
};

export class ApiError extends Error {
  constructor(status, body, text) {
    const err = (body && body.error) || {};
    super(err.message || (status ? `HTTP ${status}` : text || "network error"));
    this.status = status;
    this.code = err.code || (status ? `http_${status}` : "network");
    this.field = err.field || null;
    this.errors = err.errors || null; // every validation problem, each {field, reason}
    this.details = err.details || null;
  }
  get forbidden() { return this.status === 403; }
}

// The server's clock minus ours, from the Date header of its answers (to the second):
// the overview's "last 5 minutes" is the server's five minutes.
let clockOffset = 0;
export const serverNow = () => Date.now() + clockOffset;

let onUnauthorized = null;
export function whenUnauthorized(fn) { onUnauthorized = fn; }

async function send(method, path, body, token) {
  const headers = { Accept: "application/json", Authorization: `Bearer ${token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(`/api/v1${path}`, {
      method, headers, cache: "no-store", credentials: "omit",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, null, `cannot reach the server (${e.message})`);
  }
  const date = Date.parse(resp.headers.get("date") || "");
  if (!Number.isNaN(date)) clockOffset = date + 500 - Date.now(); // the header is truncated to the second
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!resp.ok) throw new ApiError(resp.status, data, text);
  return data;
}

/** api("GET", "/jobs/queue/status"), api("POST", "/jobs/submit", {...}) */
export async function api(method, path, body) {
  const token = session.token;
  try {
    return await send(method, path, body, token);
  } catch (e) {
    if (e.status === 401 && onUnauthorized) onUnauthorized(e);
    throw e;
  }
}

export const get = (path) => api("GET", path);
export const post = (path, body) => api("POST", path, body);
export const put = (path, body) => api("PUT", path, body);

/** Whether the server accepts `token`, and who it is: GET /auth/me answers every role
 * with {user, tenant, role, global_admin}. A 401 means the token is refused. */
export async function checkToken(token) {
  try {
    return { ok: true, me: await send("GET", "/auth/me", undefined, token) };
  } catch (e) {
    return { ok: false, error: e };
  }
}

const ROLES = ["member", "operator", "admin"];
/** Whether `me` has at least `role`; unknown (null) counts as yes: the API still decides. */
export function atLeast(me, role) {
  if (!me || !ROLES.includes(me.role)) return true;
  return ROLES.indexOf(me.role) >= ROLES.indexOf(role);
}

export function qs(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") u.set(k, v);
  const s = u.toString();
  return s ? `?${s}` : "";
}

/** A message for an error, saying what a 403 means. */
export function explain(e) {
  if (e && e.status === 403) return `Your role may not do this (${e.message}).`;
  if (e && e.status === 0) return e.message;
  return e ? `${e.message}${e.status ? ` (${e.status})` : ""}` : "unknown error";
}
