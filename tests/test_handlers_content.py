"""The `content` handlers (outline, assemble), called directly, and `summarize` on a mapped
section: the pieces of the content pipeline in docs/pipelines.md."""

from __future__ import annotations

import pytest

from app import JobContext, PermanentError
from handlers.content import assemble, outline
from handlers.text_intelligence import summarize

DOC = """# Tea in the city

## Markets
Tea sales rose in March. The new store opened downtown. Sales of green tea rose most.

## Weather
Rain closed the market twice. Tea sales rose again in April.
"""


def ctx(operation: str, params: dict, parents: dict | None = None) -> JobContext:
    c = JobContext(job_id="j1", engine="content", operation=operation, attempt=1, params=params)
    c.parents = parents or {}
    return c


async def test_outline_splits_at_headings_and_takes_the_title():
    r = await outline(ctx("outline", {"text": DOC}))
    assert r["title"] == "Tea in the city" and r["count"] == 2
    assert [s["heading"] for s in r["sections"]] == ["Markets", "Weather"]
    assert r["sections"][1]["text"] == "Rain closed the market twice. Tea sales rose again in April."
    assert r["sections"][0]["words"] == 16


async def test_without_headings_each_paragraph_is_a_section_headed_by_its_first_sentence():
    text = "Cats sleep a lot. They purr.\n\nDogs bark at night. They guard the house.\n\n   \n"
    r = await outline(ctx("outline", {"text": text, "title": "Pets", "max_sections": 1}))
    assert r == {
        "title": "Pets",
        "sections": [{"heading": "Cats sleep a lot.", "text": "Cats sleep a lot. They purr.", "words": 6}],
        "count": 1,
    }


async def test_outline_reads_its_parents_text():
    r = await outline(ctx("outline", {}, {"fetch": {"body": DOC, "status_code": 200}}))
    assert r["count"] == 2


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"text": DOC, "max_sections": 0}, "max_sections"),
        ({"text": DOC, "title": ""}, "title"),
        ({"text": " "}, "text"),
    ],
)
async def test_bad_parameters_fail_permanently_naming_the_field(params, field):
    with pytest.raises(PermanentError) as e:
        await outline(ctx("outline", params))
    assert e.value.message.startswith(f"{field}:")


async def test_a_mapped_summary_keeps_its_sections_heading():
    section = {"heading": "Markets", "text": "Tea sales rose in March. The store opened. Green tea rose most."}
    r = await summarize(ctx("summarize", {"item": section, "index": 0, "sentences": 1}))
    assert r["heading"] == "Markets" and r["summary"] in section["text"]


async def test_assemble_joins_a_maps_results_in_order_under_the_title():
    parents = {
        "intro": {"text": "An opening line."},
        "sections": [{"heading": "Markets", "summary": "Tea sales rose."}, {"heading": "Weather", "summary": "Rain."}],
    }
    r = await assemble(ctx("assemble", {"title": "Tea"}, parents))
    assert r["text"] == "# Tea\n\nAn opening line.\n\n## Markets\n\nTea sales rose.\n\n## Weather\n\nRain.\n"
    assert (r["sections"], r["words"]) == (3, 10)


async def test_assemble_without_any_text_fails_permanently():
    with pytest.raises(PermanentError) as e:
        await assemble(ctx("assemble", {}, {"a": {"count": 1}, "b": []}))
    assert e.value.code == "bad_input"
