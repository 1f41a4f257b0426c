"""The `text_intelligence` handlers, called directly, on texts whose statistics were counted by hand."""

from __future__ import annotations

import asyncio
import time

import pytest

from app import JobContext, PermanentError
from handlers.text_intelligence import analyze, sentences, summarize, syllables

TEXT = "The quick brown fox jumps over the lazy dog. The dog sleeps!\n\nA fox is quick? Yes."

CATS = (
    "Cats are wonderful pets. Cats love sleeping and cats love playing.\n"
    "The weather today is mild. Many people adopt cats because cats are calm pets. Bananas are yellow."
)


def make_ctx(operation: str, params: dict, calls: list | None = None) -> JobContext:
    ctx = JobContext(job_id="j1", engine="text_intelligence", operation=operation, attempt=1, params=params)
    if calls is not None:

        async def sink(percent, stage, data):
            calls.append((percent, stage, data))

        ctx._sink = sink
    return ctx


async def test_analyze_counts_a_known_text():
    calls: list = []
    r = await analyze(make_ctx("analyze", {"text": TEXT}, calls))
    assert r["characters"] == 82
    assert r["characters_no_spaces"] == 65
    assert r["words"] == 17
    assert r["sentences"] == 4
    assert r["paragraphs"] == 2
    assert r["unique_words"] == 12
    assert r["average_word_length"] == 3.59  # 61 letters / 17 words
    assert r["average_sentence_length"] == 4.25
    assert r["top_words"][:3] == [
        {"word": "dog", "count": 2},
        {"word": "fox", "count": 2},
        {"word": "quick", "count": 2},
    ]
    assert [w["word"] for w in r["top_words"]] == [
        "dog",
        "fox",
        "quick",
        "brown",
        "jumps",
        "lazy",
        "sleeps",
        "yes",
    ]  # no stopwords (the, over, a, is)
    assert r["syllables"] == 19
    assert r["flesch_reading_ease"] == 107.97  # 206.835 - 1.015 * 17/4 - 84.6 * 19/17
    assert r["flesch_kincaid_grade"] == -0.74  # 0.39 * 17/4 + 11.8 * 19/17 - 15.59
    assert r["reading_time_minutes"] == 0.07  # 17 / 238
    stages = [c[1] for c in calls]
    assert stages[0] == "counting" and "readability" in stages and calls[-1][:2] == (100.0, "done")
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)


async def test_analyze_top_words_limited_to_ten_and_reading_time():
    text = " ".join(f"word{i} " * (20 - i) for i in range(15)) + ". " + "alpha " * 476
    r = await analyze(make_ctx("analyze", {"text": text}))
    assert len(r["top_words"]) == 10
    assert r["top_words"][0] == {"word": "alpha", "count": 476}
    assert r["top_words"][1] == {"word": "word0", "count": 20}
    assert r["words"] == sum(20 - i for i in range(15)) + 476
    assert r["reading_time_minutes"] == round(r["words"] / 238, 2)


async def test_analyze_empty_text():
    r = await analyze(make_ctx("analyze", {"text": "   \n"}))
    assert (r["words"], r["sentences"], r["paragraphs"], r["top_words"]) == (0, 0, 0, [])
    assert r["flesch_reading_ease"] is None


@pytest.mark.parametrize(
    "word, count",
    [
        ("the", 1),
        ("cat", 1),
        ("table", 2),
        ("whale", 1),
        ("make", 1),
        ("makes", 1),
        ("boxes", 2),
        ("jumped", 1),
        ("wanted", 2),
        ("beautiful", 3),
        ("syllable", 3),
        ("reading", 2),
        ("free", 1),
        ("people", 2),
        ("queue", 1),
        ("understanding", 4),
        ("2024", 1),
        ("", 0),
    ],
)
def test_syllable_heuristic(word, count):
    assert syllables(word) == count


def test_sentence_splitting():
    assert sentences('Pi is 3.14 roughly. Really?! "Yes." Heading\n\nNext para') == [
        "Pi is 3.14 roughly.",
        "Really?!",
        '"Yes."',
        "Heading",
        "Next para",
    ]


async def test_analyze_runs_off_the_event_loop():
    text = ("Readability formulas estimate difficulty. " * 12_000)[:500_000]
    ticks = 0
    done = asyncio.Event()

    async def ticker():
        nonlocal ticks
        while not done.is_set():
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    start = time.monotonic()
    r = await analyze(make_ctx("analyze", {"text": text}))
    elapsed = time.monotonic() - start
    done.set()
    await task
    assert r["words"] == len(text.split())
    assert ticks >= max(2, int(elapsed / 0.005) // 10)  # the loop kept running during the work


async def test_analyze_honours_cancellation():
    ctx = make_ctx("analyze", {"text": TEXT})
    ctx.cancelled.set()
    with pytest.raises(asyncio.CancelledError):
        await analyze(ctx)


async def test_summarize_picks_top_sentences_in_original_order():
    calls: list = []
    r = await summarize(make_ctx("summarize", {"text": CATS, "sentences": 2}, calls))
    assert r["total_sentences"] == 5
    assert [s["index"] for s in r["sentences"]] == [1, 3]
    assert r["summary"] == (
        "Cats love sleeping and cats love playing. Many people adopt cats because cats are calm pets."
    )
    assert r["sentences"][0]["score"] == 3.2  # (5 + 2 + 1 + 5 + 2 + 1) / 5
    assert calls[-1][:2] == (100.0, "done")

    r = await summarize(make_ctx("summarize", {"text": CATS}))  # default: 3
    assert [s["index"] for s in r["sentences"]] == [0, 1, 3]
    assert r["summary"].startswith("Cats are wonderful pets. Cats love")


async def test_summarize_short_text_returns_everything():
    r = await summarize(make_ctx("summarize", {"text": "Only one sentence here", "sentences": 5}))
    assert r["summary"] == "Only one sentence here"
    assert r["total_sentences"] == 1


@pytest.mark.parametrize(
    "fn, params, field",
    [
        (analyze, {}, "text"),
        (analyze, {"text": 5}, "text"),
        (analyze, {"text": "x" * 1_000_001}, "text"),
        (summarize, {}, "text"),
        (summarize, {"text": "a. b.", "sentences": 0}, "sentences"),
        (summarize, {"text": "a. b.", "sentences": "3"}, "sentences"),
        (summarize, {"text": "a. b.", "sentences": True}, "sentences"),
        (summarize, {"text": "a. b.", "sentences": 101}, "sentences"),
    ],
)
async def test_bad_params(fn, params, field):
    with pytest.raises(PermanentError) as err:
        await fn(make_ctx(fn.__name__, params))
    assert err.value.code == "bad_input"
    assert err.value.message.startswith(f"{field}:")


# --- composition: a text step takes its parents' text (handlers/inputs.py) -------------------


def child_ctx(operation: str, params: dict, parents: dict) -> JobContext:
    ctx = make_ctx(operation, params)
    ctx.parents = parents
    return ctx


async def test_analyze_reads_a_fetched_body_and_a_summary():
    fetched = {"status_code": 200, "headers": {}, "body": TEXT, "truncated": False}
    r = await analyze(child_ctx("analyze", {}, {"fetch": fetched}))
    assert r == await analyze(make_ctx("analyze", {"text": TEXT}))
    summary = await summarize(make_ctx("summarize", {"text": CATS, "sentences": 1}))
    r = await analyze(child_ctx("analyze", {}, {"summary": summary}))
    assert r["sentences"] == 1 and r["words"] == len(summary["summary"].split())


async def test_summarize_joins_several_parents_in_order_and_own_text_wins():
    parents = {
        "a": {"text": "Cats sleep all day."},
        "img": {"data_base64": "xx"},
        "b": {"summary": "Dogs bark at night."},
    }
    r = await summarize(child_ctx("summarize", {"sentences": 5}, parents))
    assert [s["text"] for s in r["sentences"]] == ["Cats sleep all day.", "Dogs bark at night."]
    r = await analyze(child_ctx("analyze", {}, parents))
    assert r["paragraphs"] == 2
    r = await summarize(child_ctx("summarize", {"sentences": 5, "input_from": ["b"]}, parents))
    assert r["summary"] == "Dogs bark at night."
    r = await summarize(child_ctx("summarize", {"text": "Own text only."}, parents))
    assert r["summary"] == "Own text only."


async def test_text_step_without_text_anywhere_names_the_field():
    with pytest.raises(PermanentError) as err:
        await analyze(child_ctx("analyze", {}, {"img": {"data_base64": "xx"}}))
    assert err.value.code == "bad_input" and err.value.message.startswith("text:")
    assert "summary" in err.value.message and "body" in err.value.message  # says where else it looked
