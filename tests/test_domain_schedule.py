"""Cron parsing, tick times across DST, and the misfire plan: pure, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from pydantic import ValidationError

from app.domain.schedule import Cron, ScheduleSpec, plan

UTC = UTC


def z(*a) -> datetime:
    return datetime(*a, tzinfo=UTC)


def ticks(cron: Cron, start: datetime, n: int) -> list[datetime]:
    out, t = [], start
    for _ in range(n):
        t = cron.next_after(t)
        out.append(t)
    return out


@pytest.mark.parametrize(
    "expr",
    [
        "* * *",
        "* * * *",
        "* * * * * * *",
        "@hourly",
        "61 * * * *",
        "* 24 * * *",
        "* * * * * 60",
        "a b c d e",
        "",
        "*/0 * * * *",
    ],
)
def test_bad_expressions_are_refused(expr):
    with pytest.raises(ValueError):
        Cron.parse(expr)


def test_an_expression_that_never_fires_is_refused():
    with pytest.raises(ValueError, match="never fires"):
        Cron.parse("0 0 30 2 *")


@pytest.mark.parametrize("tz", ["Mars/Olympus", "../etc/passwd", "", "/etc/localtime"])
def test_unknown_zones_are_refused(tz):
    with pytest.raises(ValueError):
        Cron.parse("* * * * *", tz)


def test_five_fields_tick_on_minutes_and_six_have_seconds_last():
    assert ticks(Cron.parse("*/15 * * * *"), z(2024, 1, 1, 0, 7, 30), 3) == [
        z(2024, 1, 1, 0, 15),
        z(2024, 1, 1, 0, 30),
        z(2024, 1, 1, 0, 45),
    ]
    assert ticks(Cron.parse("* * * * * 15,45"), z(2024, 1, 1, 0, 0, 20), 3) == [
        z(2024, 1, 1, 0, 0, 45),
        z(2024, 1, 1, 0, 1, 15),
        z(2024, 1, 1, 0, 1, 45),
    ]


def test_next_after_is_strict_and_back_from_is_inclusive():
    c = Cron.parse("*/5 * * * *")
    assert c.next_after(z(2024, 1, 1, 0, 10)) == z(2024, 1, 1, 0, 15)
    assert c.next_after(z(2024, 1, 1, 0, 9, 59, 999_000)) == z(2024, 1, 1, 0, 10)
    assert c.back_from(z(2024, 1, 1, 0, 10), z(2024, 1, 1), 2) == [z(2024, 1, 1, 0, 10), z(2024, 1, 1, 0, 5)]
    assert c.back_from(z(2024, 1, 1, 0, 10), z(2024, 1, 1, 0, 6), 5) == [z(2024, 1, 1, 0, 10)]


def test_zone_shifts_the_wall_clock():
    assert Cron.parse("0 9 * * *", "Asia/Tokyo").next_after(z(2024, 5, 31, 12)) == z(2024, 6, 1, 0)  # 09:00 JST
    assert Cron.parse("0 9 * * *", "Europe/Paris").next_after(z(2024, 6, 1)) == z(2024, 6, 1, 7)  # CEST


def test_spring_forward_a_missing_wall_time_fires_once_at_the_end_of_the_gap():
    c = Cron.parse("30 2 * * *", "America/New_York")  # 2024-03-10: 02:00 EST -> 03:00 EDT
    assert ticks(c, z(2024, 3, 8, 12), 3) == [z(2024, 3, 9, 7, 30), z(2024, 3, 10, 7, 0), z(2024, 3, 11, 6, 30)]


def test_fall_back_a_fixed_hour_fires_once():
    c = Cron.parse("30 1 * * *", "America/New_York")  # 2024-11-03: 01:00-02:00 happens twice
    assert ticks(c, z(2024, 11, 1, 12), 3) == [z(2024, 11, 2, 5, 30), z(2024, 11, 3, 5, 30), z(2024, 11, 4, 6, 30)]
    assert c.back_from(z(2024, 11, 4, 7), z(2024, 11, 2), 10) == [
        z(2024, 11, 4, 6, 30),
        z(2024, 11, 3, 5, 30),
        z(2024, 11, 2, 5, 30),
    ]


def test_fall_back_an_interval_fires_in_both_passes():
    c = Cron.parse("*/30 * * * *", "America/New_York")
    # 01:00 EDT, 01:30 EDT, 01:00 EST, 01:30 EST, 02:00 EST: every 30 minutes of real time
    assert ticks(c, z(2024, 11, 3, 4, 50), 5) == [
        z(2024, 11, 3, 5),
        z(2024, 11, 3, 5, 30),
        z(2024, 11, 3, 6),
        z(2024, 11, 3, 6, 30),
        z(2024, 11, 3, 7),
    ]


@pytest.mark.parametrize(
    "expr,tz",
    [
        ("30 1 * * *", "America/New_York"),
        ("*/20 * * * *", "America/New_York"),
        ("15 2 * * *", "Europe/London"),
        ("0 */3 * * * 30", "Australia/Sydney"),
    ],
)
def test_ticks_strictly_increase_and_back_from_agrees_with_next_after(expr, tz):
    c = Cron.parse(expr, tz)
    for start in (z(2024, 3, 9), z(2024, 3, 30), z(2024, 10, 5), z(2024, 10, 26), z(2024, 11, 2)):
        seq = ticks(c, start, 150)
        assert all(a < b for a, b in pairwise(seq))
        assert list(reversed(c.back_from(seq[-1], seq[0], 1000))) == seq


def test_plan_nothing_due():
    c = Cron.parse("*/5 * * * *")
    assert plan(c, z(2024, 1, 1, 0, 5), z(2024, 1, 1, 0, 4, 59), "skip", 100) is None


def test_plan_on_time_runs_the_one_tick():
    c = Cron.parse("*/5 * * * *")
    p = plan(c, z(2024, 1, 1, 0, 5), z(2024, 1, 1, 0, 5, 0, 300_000), "skip", 100)
    assert p.run == [z(2024, 1, 1, 0, 5)] and p.resume == z(2024, 1, 1, 0, 10) and p.skipped is None


def test_plan_skip_runs_only_the_latest_missed_tick():
    c = Cron.parse("*/5 * * * *")
    p = plan(c, z(2024, 1, 1, 0, 5), z(2024, 1, 1, 1, 2), "skip", 100)
    assert p.run == [z(2024, 1, 1, 1, 0)] and p.resume == z(2024, 1, 1, 1, 5)
    assert p.skipped == (z(2024, 1, 1, 0, 5), z(2024, 1, 1, 0, 55))


def test_plan_catch_up_runs_every_missed_tick_oldest_first():
    c = Cron.parse("*/5 * * * *")
    p = plan(c, z(2024, 1, 1, 0, 5), z(2024, 1, 1, 1, 2), "catch_up", 100)
    assert p.run == [z(2024, 1, 1, 0, 5) + timedelta(minutes=5 * i) for i in range(12)]
    assert p.resume == z(2024, 1, 1, 1, 5) and p.skipped is None


def test_plan_catch_up_is_capped_to_the_most_recent_ticks():
    c = Cron.parse("*/5 * * * *")
    p = plan(c, z(2024, 1, 1, 0, 5), z(2024, 1, 1, 1, 2), "catch_up", 3)
    assert p.run == [z(2024, 1, 1, 0, 50), z(2024, 1, 1, 0, 55), z(2024, 1, 1, 1, 0)]
    assert p.skipped == (z(2024, 1, 1, 0, 5), z(2024, 1, 1, 0, 45))


def test_plan_after_a_year_of_downtime_is_cheap():
    c = Cron.parse("* * * * * *")  # every second: 31 million missed ticks
    p = plan(c, z(2023, 1, 1), z(2024, 1, 1, 0, 0, 0, 500_000), "catch_up", 100)
    assert len(p.run) == 100 and p.run[-1] == z(2024, 1, 1) and p.resume == z(2024, 1, 1, 0, 0, 1)


def spec(**kw):
    base = {"name": "s", "cron": "*/5 * * * *", "job": {"engine": "testing", "operation": "ok"}}
    base.update(kw)
    return ScheduleSpec.model_validate(base)


def test_spec_normalises_cron_and_defaults():
    s = spec(cron="  */5  *  * * * ")
    assert s.cron == "*/5 * * * *" and s.timezone == "UTC" and s.misfire_policy == "skip"
    assert s.target() == ("job", {"engine": "testing", "operation": "ok"})


@pytest.mark.parametrize(
    "bad,where",
    [
        ({"job": {"engine": "testing", "operation": "ok", "run_at": "2030-01-01T00:00:00Z"}}, ("job", "run_at")),
        ({"job": {"engine": "testing", "operation": "ok", "dedupe_key": "x"}}, ("job", "dedupe_key")),
        ({"job": {"engine": "testing", "operation": "ok", "parameters": {"$where": 1}}}, ("job", "parameters")),
        ({"job": {"engine": "testing", "operation": "ok", "extra": 1}}, ("job", "extra")),
        ({"misfire_policy": "later"}, ("misfire_policy",)),
        ({"surprise": True}, ("surprise",)),
        (
            {
                "workflow": {
                    "name": "w",
                    "jobs": [{"key": "a", "engine": "testing", "operation": "ok"}],
                    "metadata": {"a.b": 1},
                },
                "job": None,
            },
            ("workflow",),
        ),
    ],
)
def test_spec_refuses_unsafe_or_unknown_fields(bad, where):
    with pytest.raises(ValidationError) as e:
        spec(**bad)
    assert e.value.errors()[0]["loc"][: len(where)] == where
