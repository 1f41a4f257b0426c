"""The handler registry: registration, duplicates, lookup errors."""

from __future__ import annotations

import pytest

from app import JobContext, handler, registry
from app.errors import ValidationFailed


def test_a_second_function_for_the_same_pair_fails():
    @handler(engine="regtest", operation="one")
    async def first(ctx: JobContext) -> dict:
        return {}

    with pytest.raises(registry.DuplicateHandler, match="regtest.one is registered twice"):

        @handler(engine="regtest", operation="one")
        async def second(ctx: JobContext) -> dict:
            return {}

    assert registry.get("regtest", "one").fn is first


def test_handlers_must_be_async_and_well_named():
    with pytest.raises(TypeError):

        @handler(engine="regtest", operation="sync")
        def not_async(ctx):
            return {}

    with pytest.raises(ValueError):
        handler(engine="bad name", operation="x")


def test_unknown_pair_is_a_named_validation_error():
    with pytest.raises(ValidationFailed, match="nowhere.nothing"):
        registry.require("nowhere", "nothing")


def test_builtins_load():
    registry.load()
    names = {(h.engine, h.operation) for h in registry.all_handlers()}
    assert {
        ("general", "echo"),
        ("general", "http_request"),
        ("text_intelligence", "analyze"),
        ("image_generation", "resize"),
    } <= names
