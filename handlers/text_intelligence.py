"""The `text_intelligence` engine: text statistics (`analyze`) and extractive summaries
(`summarize`), in plain Python with no model or network.

Owns: the tokenisers (words, sentences, paragraphs), the English stopword list, the syllable
heuristic and the readability formulas (Flesch reading ease, Flesch–Kincaid grade). CPU work
runs in `asyncio.to_thread`, one stage at a time, so the event loop stays free and
cancellation is checked between stages. Both handlers read `text`, or in a workflow their
parents' `text`/`summary`/`body` (handlers/inputs.py); `summarize` returns its extract as
`summary`, so a child step reads that in turn.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from typing import Any

from app import JobContext, PermanentError, handler
from handlers.inputs import item_heading, text_input

MAX_CHARS = 1_000_000
WORDS_PER_MINUTE = 238

STOPWORDS = frozenset(
    """
a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further
had has have having he her here hers herself him himself his how i if in into is it its itself
just me more most my myself no nor not now of off on once only or other our ours ourselves out
over own same she should so some such than that the their theirs them themselves then there
these they this those through to too under until up very was we were what when where which while
who whom why will with would you your yours yourself yourselves s t don't it's i'm isn't
""".split()
)

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s|$)")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n\s*")
_VOWELS = re.compile(r"[aeiouy]+")
_ES_SOUNDED = ("ses", "xes", "zes", "ches", "shes", "ces", "ges")


def _bad(field: str, reason: str) -> PermanentError:
    return PermanentError("bad_input", f"{field}: {reason}")


def _text_param(ctx: JobContext) -> str:
    """`text`, or in a workflow the parents' text (handlers/inputs.py), within MAX_CHARS."""
    text = text_input(ctx)
    if len(text) > MAX_CHARS:
        raise _bad("text", f"must be at most {MAX_CHARS} characters")
    return text


def words(text: str) -> list[str]:
    """Words, lower-cased, with curly apostrophes folded to straight ones."""
    return [w.lower().replace("’", "'") for w in _WORD.findall(text)]


def paragraphs(text: str) -> list[str]:
    return [p.strip() for p in _PARAGRAPH_BREAK.split(text) if _WORD.search(p)]


def sentences(text: str) -> list[str]:
    """Sentences in order: a run ending in . ! ? or … followed by whitespace, or a paragraph's
    unpunctuated tail (a heading, a last line). Only runs holding a word count."""
    out: list[str] = []
    for para in paragraphs(text):
        start = 0
        for m in _SENTENCE_END.finditer(para):
            out.append(para[start : m.end()])
            start = m.end()
        out.append(para[start:])
    return [" ".join(s.split()) for s in out if _WORD.search(s)]


def syllables(word: str) -> int:
    """Heuristic English syllable count: vowel groups, less a silent final e / -es / -ed."""
    w = re.sub(r"[^a-z]", "", word.lower())
    if not w:
        return 1 if any(c.isalnum() for c in word) else 0  # numbers, non-Latin words
    if len(w) <= 3:
        return 1
    count = len(_VOWELS.findall(w))
    if w.endswith("e") and not w.endswith(("le", "ee", "ye")) or w.endswith("le") and w[-3] in "aeiouy":
        count -= 1  # make, whale (but table, free)
    elif w.endswith("es") and not w.endswith(_ES_SOUNDED) and w[-3] not in "aeiouy":
        count -= 1  # makes (but boxes)
    elif w.endswith("ed") and w[-3] not in "tdaeiouy":
        count -= 1  # jumped (but wanted)
    return max(1, count)


def _counts(text: str) -> dict[str, Any]:
    ws = words(text)
    sents = sentences(text)
    n_words = len(ws)
    n_sents = len(sents) if sents else (1 if ws else 0)
    return {
        "characters": len(text),
        "characters_no_spaces": sum(1 for c in text if not c.isspace()),
        "words": n_words,
        "sentences": n_sents,
        "paragraphs": len(paragraphs(text)),
        "unique_words": len(set(ws)),
        "average_word_length": round(sum(len(w.replace("'", "")) for w in ws) / n_words, 2) if ws else 0.0,
        "average_sentence_length": round(n_words / n_sents, 2) if n_sents else 0.0,
        "top_words": top_words(ws),
        "reading_time_minutes": round(n_words / WORDS_PER_MINUTE, 2),
    }


def top_words(ws: list[str], n: int = 10) -> list[dict[str, Any]]:
    counts = Counter(w for w in ws if w not in STOPWORDS and not w.isdigit())
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return [{"word": w, "count": c} for w, c in ranked]


def readability(text: str) -> dict[str, Any]:
    ws = words(text)
    n_sents = len(sentences(text)) or 1
    if not ws:
        return {"syllables": 0, "flesch_reading_ease": None, "flesch_kincaid_grade": None}
    n_syll = sum(syllables(w) for w in ws)
    wps, spw = len(ws) / n_sents, n_syll / len(ws)
    return {
        "syllables": n_syll,
        "flesch_reading_ease": round(206.835 - 1.015 * wps - 84.6 * spw, 2),
        "flesch_kincaid_grade": round(0.39 * wps + 11.8 * spw - 15.59, 2),
    }


def score_sentences(sents: list[str]) -> list[float]:
    """Each sentence's score: the sum of its content words' frequencies, each divided by the
    most frequent content word's (so scores do not grow with document length)."""
    per_sentence = [[w for w in words(s) if w not in STOPWORDS] for s in sents]
    freq = Counter(w for ws in per_sentence for w in ws)
    top = max(freq.values(), default=1)
    return [sum(freq[w] for w in ws) / top for ws in per_sentence]


async def _stage(ctx: JobContext, percent: float, stage: str) -> None:
    if ctx.cancelled.is_set():
        raise asyncio.CancelledError()
    await ctx.progress(percent, stage=stage)


@handler(engine="text_intelligence", operation="analyze")
async def analyze(ctx: JobContext) -> dict:
    """Counts, top words, readability and reading time for `text` (or the parents' text)."""
    text = _text_param(ctx)
    await _stage(ctx, 5, "counting")
    result = await asyncio.to_thread(_counts, text)
    await _stage(ctx, 60, "readability")
    result.update(await asyncio.to_thread(readability, text))
    await ctx.progress(100, stage="done")
    return result


@handler(engine="text_intelligence", operation="summarize")
async def summarize(ctx: JobContext) -> dict:
    """Extractive summary: the `sentences` best-scoring sentences of `text` (or the parents'
    text), in original order."""
    text = _text_param(ctx)
    n = ctx.params.get("sentences", 3)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 100:
        raise _bad("sentences", "must be an integer between 1 and 100")
    await _stage(ctx, 5, "splitting")
    sents = await asyncio.to_thread(sentences, text)
    await _stage(ctx, 30, "scoring")
    scores = await asyncio.to_thread(score_sentences, sents)
    await _stage(ctx, 90, "selecting")
    best = sorted(range(len(sents)), key=lambda i: (-scores[i], i))[:n]
    chosen = sorted(best)
    await ctx.progress(100, stage="done")
    out = {
        "summary": " ".join(sents[i] for i in chosen),
        "sentences": [{"index": i, "text": sents[i], "score": round(scores[i], 4)} for i in chosen],
        "total_sentences": len(sents),
    }
    if (heading := item_heading(ctx)) is not None:  # a mapped section keeps its heading
        out["heading"] = heading
    return out
