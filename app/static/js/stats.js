// Jobs completed and failed in the last five minutes, for the overview's chart.
//
// Where the numbers come from: once after sign-in, the newest 500 completed and the newest
// 500 failed jobs (GET /api/v1/jobs/?status=...&limit=500), counted by their completed_at;
// from then on, every job.completed and job.failed event of the WebSocket, counted at the
// event's time. A finish seen both ways is counted once (same job and status within 10 s).
// When a page of 500 was full and reached back less than five minutes, older finishes in
// the window were not loaded: `partial` says so and the chart shows it.

import { get } from "./api.js";
import { parseTime } from "./dom.js";

export const WINDOW_MS = 5 * 60 * 1000;
export const BUCKET_MS = 30 * 1000;
const PAGE = 500;

export class Stats extends EventTarget {
  constructor() {
    super();
    this.points = []; // {t, status, job}
    this.byJob = new Map(); // `${job}:${status}` -> [t]
    this.partialSince = null; // before this time the seed may have missed some
    this.seeded = false;
  }

  async seed(now) {
    for (const status of ["completed", "failed"]) {
      const page = await get(`/jobs/?status=${status}&limit=${PAGE}`);
      let oldest = Infinity;
      for (const j of page.jobs) {
        const t = parseTime(j.completed_at);
        if (t === null) continue;
        oldest = Math.min(oldest, parseTime(j.created_at) ?? t);
        this.add(j.id, status, t);
      }
      // The list is newest-created first: a full page that starts inside the window may
      // have left out jobs created before it that finished in it.
      if (page.next_cursor && oldest > now - WINDOW_MS) this.partialSince = Math.max(this.partialSince ?? 0, oldest);
    }
    this.seeded = true;
    this.changed();
  }

  onEvent(e) {
    if (e.type !== "job.completed" && e.type !== "job.failed") return;
    const t = parseTime(e.at);
    if (t !== null && this.add(e.job_id, e.status, t)) this.changed();
  }

  add(job, status, t) {
    const key = `${job}:${status}`;
    const times = this.byJob.get(key) || [];
    if (times.some((x) => Math.abs(x - t) < 10000)) return false;
    times.push(t);
    this.byJob.set(key, times);
    this.points.push({ t, status, job });
    return true;
  }

  prune(now) {
    const cut = now - WINDOW_MS - BUCKET_MS;
    if (!this.points.length || this.points[0].t >= cut) return;
    this.points = this.points.filter((p) => p.t >= cut);
    for (const [k, times] of this.byJob) {
      const left = times.filter((t) => t >= cut);
      if (left.length) this.byJob.set(k, left); else this.byJob.delete(k);
    }
  }

  /** Ten 30-second buckets ending at `now`: [{start, completed, failed}], oldest first. */
  buckets(now) {
    this.prune(now);
    const n = WINDOW_MS / BUCKET_MS;
    const start = now - WINDOW_MS;
    const out = Array.from({ length: n }, (_, i) => ({ start: start + i * BUCKET_MS, completed: 0, failed: 0 }));
    for (const p of this.points) {
      if (p.t < start || p.t > now + 2000) continue;
      const i = Math.min(n - 1, Math.floor((p.t - start) / BUCKET_MS));
      out[i][p.status] += 1;
    }
    return out;
  }

  changed() { this.dispatchEvent(new Event("change")); }
}
