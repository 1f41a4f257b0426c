// The live connection: one WebSocket to /api/v1/ws (docs/events.md). It authenticates with
// its first message (so the token never sits in a URL or a log), subscribes to what it was
// asked, hands every event and notification to its listeners, and reconnects with backoff,
// resuming each event subscription from the last seq it saw, so nothing is missed or shown
// twice across a reconnect.
//
// Listeners: "event" (a job.* or workflow.* event), "notification", "state" ("connecting",
// "live", "offline"), "subscribed", "resync" (events may have been missed: reload from
// REST), "unauthorized".

export class Live extends EventTarget {
  constructor(token, subscriptions = []) {
    super();
    this.token = token;
    this.subs = subscriptions.map((s) => ({ ...s }));
    this.ws = null;
    this.state = "offline";
    this.lastSeq = null; // the highest event seq seen on this object's connections
    this.retry = 0;
    this.stopped = false;
    this.timer = null;
    this.everConnected = false;
  }

  start() {
    this.stopped = false;
    this._connect();
    return this;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000, "bye");
    this.ws = null;
    this._state("offline");
  }

  subscribe(spec) {
    if (!this.subs.some((s) => same(s, spec))) this.subs.push({ ...spec });
    if (this.state === "live") this._send({ action: "subscribe", ...spec });
  }

  unsubscribe(spec) {
    this.subs = this.subs.filter((s) => !same(s, spec));
    if (this.state === "live") this._send({ action: "unsubscribe", ...strip(spec) });
  }

  _state(st) {
    if (this.state === st) return;
    this.state = st;
    this.dispatchEvent(new CustomEvent("state", { detail: st }));
  }

  _send(msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
  }

  _connect() {
    this._state("connecting");
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${proto}//${location.host}/api/v1/ws`);
    this.ws = ws;
    ws.addEventListener("open", () => ws.send(JSON.stringify({ action: "auth", token: this.token })));
    ws.addEventListener("message", (e) => {
      if (ws !== this.ws) return;
      let data;
      try { data = JSON.parse(e.data); } catch { return; }
      for (const msg of Array.isArray(data) ? data : [data]) this._handle(msg);
    });
    ws.addEventListener("close", (e) => {
      if (ws !== this.ws) return;
      this.ws = null;
      if (e.code === 4401) {
        this.stopped = true;
        this._state("offline");
        this.dispatchEvent(new CustomEvent("unauthorized", { detail: e.reason }));
        return;
      }
      this._state("offline");
      if (this.stopped) return;
      const delay = Math.min(15000, 500 * 2 ** this.retry++) * (0.75 + Math.random() / 2);
      this.timer = setTimeout(() => this._connect(), delay);
    });
  }

  _handle(msg) {
    switch (msg.type) {
      case "welcome": {
        const resumed = this.everConnected;
        this.everConnected = true;
        this.retry = 0;
        for (const s of this.subs) {
          const out = { action: "subscribe", ...strip(s) };
          // Back after a drop: replay what we missed, except notifications (reloaded instead).
          if (resumed && this.lastSeq !== null && !s.notifications && s.since === undefined) out.since = this.lastSeq;
          this._send(out);
        }
        this._state("live");
        if (resumed) this.dispatchEvent(new CustomEvent("resync", { detail: "reconnected" }));
        return;
      }
      case "subscribed":
        this.dispatchEvent(new CustomEvent("subscribed", { detail: msg }));
        return;
      case "notification":
        this.dispatchEvent(new CustomEvent("notification", { detail: msg }));
        return;
      case "error":
        if (msg.code === "dropped") this.lastSeq = null; // too far behind: start over from REST
        this.dispatchEvent(new CustomEvent("error", { detail: msg }));
        return;
      case "pong":
        return;
      default:
        if (typeof msg.seq === "number" && typeof msg.type === "string") {
          if (this.lastSeq === null || msg.seq > this.lastSeq) this.lastSeq = msg.seq;
          this.dispatchEvent(new CustomEvent("event", { detail: msg }));
        }
    }
  }
}

function strip(spec) {
  const out = {};
  for (const k of ["all", "job_id", "workflow_id", "notifications", "since"]) if (spec[k] !== undefined) out[k] = spec[k];
  return out;
}

function same(a, b) {
  return Boolean(a.all) === Boolean(b.all) && a.job_id === b.job_id && a.workflow_id === b.workflow_id
    && Boolean(a.notifications) === Boolean(b.notifications);
}
