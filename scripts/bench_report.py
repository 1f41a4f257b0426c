"""The table `scripts/bench` prints: measure | result | target | met, one row per measure of
issue 22 (and, with `--extra`, the earlier rows), from the figures the run collected. A
row whose baseline was skipped (`--no-celery`, `--no-agenda`) says so instead of a verdict.
"""

from __future__ import annotations

import statistics


def _runs(o: dict, key: str, fmt: str = ".0f") -> str:
    values = o.get(key) or []
    return f" (median of {len(values)}: {', '.join(format(v, fmt) for v in values)})" if len(values) > 1 else ""


def _met(ok: bool | None) -> str:
    return "" if ok is None else ("yes" if ok else "no")


def rows(o: dict) -> list[tuple[str, str, str, str]]:
    out: list[tuple[str, str, str, str]] = []
    cdl, cd, clat = o.get("celery_delay"), o.get("celery_drain"), o.get("celery_latency")
    anow, ad = o.get("agenda_now"), o.get("agenda_drain")
    lib, rest = o["library_enqueue"]["per_s"], o["rest_submit_per_s"]

    def add(measure, result, target="", ok=None):
        out.append((measure, result, target, _met(ok)))

    add("raw write limit (update_one by _id, 8 clients)", f"{o['raw_writes_per_s']:.0f}/s" + _runs(o, "raw_runs"))
    # 1, 2
    add(
        "library single enqueue, one client (AsyncProducer.enqueue)",
        f"{lib:.0f}/s",
        f">= {cdl['per_s']:.0f}/s (Celery delay())" if cdl else "(Celery skipped)",
        lib >= cdl["per_s"] if cdl else None,
    )
    b = o["rest_batch"]
    add(
        f"REST batch of {b['size']:,} jobs (POST /jobs/submit/batch, {b['batches']} in a row), per job",
        f"{b['per_s']:.0f} jobs/s ({b['seconds'] / b['batches']:.2f} s a batch)",
        f">= {10 * cdl['per_s']:.0f}/s (10x Celery delay())" if cdl else "(Celery skipped)",
        b["per_s"] >= 10 * cdl["per_s"] if cdl else None,
    )
    if cdl:
        add("  Celery delay(), one client, no workers", f"{cdl['per_s']:.0f}/s")
    if ef := o.get("enqueue_floor"):
        add(
            "  floor: one client writing job documents: one insert_one each; findAndModify + insert_one",
            f"{ef['one_insert']:.0f}/s; {ef['two_writes']:.0f}/s (library {lib / ef['one_insert']:.2f}x the former)",
        )
    if bf := o.get("batch_floor"):
        add(
            f"  floor: insert_many of {bf['size']:,} job documents, {bf['batches']} in a row, per job",
            f"{bf['per_s']:.0f}/s (REST batch {b['per_s'] / bf['per_s']:.2f}x)",
        )
    # 3
    fl = o["floor_per_s"]
    add(
        "REST single-job submit, one client (POST /jobs/submit)",
        f"{rest:.0f}/s ({fl / rest:.2f}x the floor's time)",
        f">= {fl / 1.5:.0f}/s (floor / 1.5)",
        rest >= fl / 1.5,
    )
    add("  floor: no-op FastAPI POST + one insert_one of a job document, own uvicorn", f"{fl:.0f}/s")
    # 4
    busy = o["rest_submit_consumed_per_s"]
    add(
        "REST submit while 2 workers run every job, against idle",
        f"{busy:.0f}/s ({busy / rest:.2f}x)",
        f">= {0.7 * rest:.0f}/s (0.7x idle)",
        busy >= 0.7 * rest,
    )
    if wf := o.get("busy_floor"):
        add(
            "  floor: a bare insert_one loop beside serve + 2 workers, while they drain, against idle",
            f"{wf['draining_per_s']:.0f}/s against {wf['idle_per_s']:.0f}/s ({wf['ratio']:.2f}x)",
        )
    # 5, 6
    dd, nr, half_raw = o["deployed_drain"], o["no_relay_drain"], o["raw_writes_per_s"] / 2
    add(
        f"drain as deployed: serve + 2 workers x 32, {dd['jobs']:,} no-op jobs",
        f"{dd['jobs_per_s']:.0f} jobs/s ({dd['jobs_per_s'] / half_raw:.2f}x raw/2)" + _runs(o, "deployed_drain_runs"),
        f">= {0.7 * half_raw:.0f} (0.7x raw/2)",
        dd["jobs_per_s"] >= 0.7 * half_raw,
    )
    if cd:
        add(
            "  against Celery",
            f"{dd['jobs_per_s'] / cd['jobs_per_s']:.1f}x",
            f">= {5 * cd['jobs_per_s']:.0f} jobs/s (5x Celery)",
            dd["jobs_per_s"] >= 5 * cd["jobs_per_s"],
        )
        add(f"  Celery drain {cd['jobs']:,} no-op tasks, 2 processes x 8 threads", f"{cd['jobs_per_s']:.1f} jobs/s")
    ratios = o.get("relay_ratios") or [dd["jobs_per_s"] / nr["jobs_per_s"]]
    ratio = statistics.median(ratios)
    add(
        "drain as deployed / the same with the relay off (SWITCHYARD_RUN_RELAY=false), alternated",
        f"{ratio:.2f} (relay off {nr['jobs_per_s']:.0f} jobs/s)" + _runs(o, "relay_ratios", ".2f"),
        ">= 0.85",
        ratio >= 0.85,
    )
    if fr := o.get("relay_floor_ratios"):
        fd = o["relay_floor_drain"]
        add(
            "  floor: relay off + a bare change stream writing each reply's events as a page, / relay off",
            f"{statistics.median(fr):.2f} ({fd['jobs_per_s']:.0f} jobs/s, {fd['jobs_per_s'] / half_raw:.2f}x raw/2)"
            + _runs(o, "relay_floor_ratios", ".2f"),
        )
    # 7, 8
    if ad:
        add(
            "drain as deployed against Agenda 6",
            f"{dd['jobs_per_s'] / ad['jobs_per_s']:.1f}x",
            f">= {5 * ad['jobs_per_s']:.0f} jobs/s (5x Agenda)",
            dd["jobs_per_s"] >= 5 * ad["jobs_per_s"],
        )
        capped = f", stopped after {ad['seconds']:.0f} s" if ad.get("capped") else ""
        tried = o.get("agenda_drain_runs") or {}
        others = "; " + ", ".join(f"{v} jobs/s at {k} ms" for k, v in tried.items()) if len(tried) > 1 else ""
        add(
            f"  Agenda 6 drain, 2 Node processes x 32, processEvery {ad['process_every_ms']} ms"
            + (" (its fastest here)" if others else ""),
            f"{ad['jobs_per_s']:.1f} jobs/s ({ad['completed']:,}/{ad['jobs']:,} jobs{capped}{others})",
        )
    else:
        add("drain as deployed against Agenda 6", "(Agenda skipped)", ">= 5x Agenda")
    if anow:
        for who, rate, times in (("library", lib, 1.0), ("REST", rest, 0.5)):
            add(
                f"single enqueue against agenda.now(), {who}",
                f"{rate / anow['per_s']:.2f}x",
                f">= {times * anow['per_s']:.0f}/s ({times:g}x)",
                rate >= times * anow["per_s"],
            )
        add("  agenda.now(), one client, nothing processing", f"{anow['per_s']:.0f}/s")
    else:
        add("single enqueue against agenda.now()", "(Agenda skipped)")
    # 9
    lat = o["latency"]
    add(
        f"submit-to-start p50, idle system ({lat['samples']} jobs, REST)",
        f"p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms",
        f"<= {0.5 * clat['p50_ms']:.1f} ms (0.5x Celery)" if clat else "(Celery skipped)",
        lat["p50_ms"] <= 0.5 * clat["p50_ms"] if clat else None,
    )
    if clat:
        add(
            f"  Celery delay() to task start, polling every {clat['poll_s'] * 1000:.0f} ms",
            f"p50 {clat['p50_ms']:.1f} ms, p99 {clat['p99_ms']:.1f} ms",
        )
    # 10
    m = o["makespan"]
    wf = statistics.median(o.get("makespan_vs_floor") or [m["workflow_s"] / m["floor_s"]])
    add(
        f"{m['steps']:,}-step fan-out/fan-in makespan against the floor run",
        f"{m['workflow_s']:.2f} s against {m['floor_s']:.2f} s ({wf:.2f}x)" + _runs(o, "makespan_vs_floor", ".2f"),
        "<= 1.15x",
        wf <= 1.15,
    )
    add(
        f"  floor: {m['steps']:,} jobs that each add only pending -> queued; {m['steps']:,} independent jobs",
        f"{m['floor_s']:.2f} s; {m['independent_s']:.2f} s",
    )
    # 11
    idle = o["at_rest"]
    for name in ("serve", "worker"):
        top = ", ".join(f"{k} {v:g}" for k, v in list(idle[f"{name}_commands"].items())[:3])
        add(
            f"commands to the database at rest, {name} (counted at the wire, {idle['seconds']:.0f} s)",
            f"{idle[name]:.1f}/s ({top})",
            "<= 2/s",
            idle[name] <= 2,
        )
    return out


def render(table: list[tuple[str, str, str, str]]) -> str:
    heads = ("measure", "result", "target", "met")
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]
    return "\n".join(lines)
