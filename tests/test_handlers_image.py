"""The `image_generation` handlers, called directly; every output is re-opened with Pillow."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io

import pytest
from PIL import Image

import handlers.image_generation as image_generation
from app import JobContext, PermanentError
from handlers.image_generation import render, resize


def make_ctx(operation: str, params: dict, calls: list | None = None) -> JobContext:
    ctx = JobContext(job_id="j1", engine="image_generation", operation=operation, attempt=1, params=params)
    if calls is not None:

        async def sink(percent, stage, data):
            calls.append((percent, stage, data))

        ctx._sink = sink
    return ctx


def open_result(result: dict) -> Image.Image:
    data = base64.b64decode(result["data_base64"])
    assert result["bytes"] == len(data)
    assert result["sha256"] == hashlib.sha256(data).hexdigest()
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.format.lower() == result["format"]
    assert img.size == (result["width"], result["height"])
    return img


def encoded(img: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


async def test_render_gradient_png():
    calls: list = []
    r = await render(make_ctx("render", {"width": 256, "height": 100, "kind": "gradient", "seed": 7}, calls))
    assert set(r) == {"format", "width", "height", "bytes", "sha256", "data_base64"}
    img = open_result(r)
    assert (img.format, img.size, img.mode) == ("PNG", (256, 100), "RGB")
    assert len(img.getcolors(maxcolors=100_000)) > 50  # a real gradient, not a flat fill
    assert [c[1] for c in calls] == ["generating", "encoding", "done"]
    assert calls[-1][0] == 100


async def test_render_is_deterministic_per_seed():
    a = await render(make_ctx("render", {"width": 32, "height": 32, "kind": "noise", "seed": 1}))
    b = await render(make_ctx("render", {"width": 32, "height": 32, "kind": "noise", "seed": 1}))
    c = await render(make_ctx("render", {"width": 32, "height": 32, "kind": "noise", "seed": 2}))
    assert a["sha256"] == b["sha256"] != c["sha256"]
    assert len(open_result(a).getcolors(maxcolors=100_000)) > 900  # 1024 random pixels


async def test_render_checker():
    r = await render(make_ctx("render", {"width": 40, "height": 30, "kind": "checker", "cell": 10, "seed": 3}))
    img = open_result(r)
    assert len(img.getcolors()) == 2
    px = img.load()
    assert px[0, 0] == px[20, 0] == px[10, 10] == px[30, 10] == px[9, 9]
    assert px[10, 0] == px[0, 10] == px[30, 0] == px[19, 9]
    assert px[0, 0] != px[10, 0]


async def test_render_jpeg():
    r = await render(make_ctx("render", {"width": 50, "height": 20, "kind": "gradient", "format": "jpeg"}))
    assert r["format"] == "jpeg"
    img = open_result(r)
    assert (img.format, img.size) == ("JPEG", (50, 20))


async def test_render_refuses_oversized_output(monkeypatch):
    monkeypatch.setattr(image_generation, "MAX_OUTPUT_BYTES", 1000)
    with pytest.raises(PermanentError) as err:
        await render(make_ctx("render", {"width": 64, "height": 64, "kind": "noise"}))
    assert err.value.code == "output_too_large"


async def test_render_honours_cancellation():
    ctx = make_ctx("render", {"width": 8, "height": 8})
    ctx.cancelled.set()
    with pytest.raises(asyncio.CancelledError):
        await render(ctx)


@pytest.mark.parametrize(
    "params, field",
    [
        ({"height": 10}, "width"),
        ({"width": 0, "height": 10}, "width"),
        ({"width": 4097, "height": 10}, "width"),
        ({"width": "10", "height": 10}, "width"),
        ({"width": 10, "height": 10.5}, "height"),
        ({"width": 10, "height": 10, "kind": "stars"}, "kind"),
        ({"width": 10, "height": 10, "format": "bmp"}, "format"),
        ({"width": 10, "height": 10, "seed": "x"}, "seed"),
    ],
)
async def test_render_bad_params(params, field):
    with pytest.raises(PermanentError) as err:
        await render(make_ctx("render", params))
    assert err.value.code == "bad_input"
    assert err.value.message.startswith(f"{field}:")


async def test_resize_by_width_height_and_scale():
    src = await render(make_ctx("render", {"width": 100, "height": 50, "kind": "checker", "seed": 4}))
    data = src["data_base64"]
    cases = [
        ({"width": 40}, (40, 20)),
        ({"height": 10}, (20, 10)),
        ({"width": 30, "height": 70}, (30, 70)),
        ({"scale": 0.5}, (50, 25)),
        ({"scale": 2}, (200, 100)),
    ]
    for params, size in cases:
        calls: list = []
        r = await resize(make_ctx("resize", {"image_base64": data, **params}, calls))
        img = open_result(r)
        assert (img.format, img.size) == ("PNG", size), params
        assert [c[1] for c in calls] == ["decoding", "resizing", "encoding", "done"]


async def test_resize_keeps_content():
    src = Image.new("RGB", (64, 64), (200, 10, 10))
    src.paste((10, 10, 200), (32, 0, 64, 64))  # left red, right blue
    r = await resize(make_ctx("resize", {"image_base64": encoded(src), "width": 16}))
    img = open_result(r).convert("RGB")
    assert img.size == (16, 16)
    assert img.getpixel((2, 8)) == (200, 10, 10)
    assert img.getpixel((13, 8)) == (10, 10, 200)


async def test_resize_converts_formats_and_modes():
    gif = Image.new("P", (30, 20))
    gif.putpalette([0, 0, 0, 255, 255, 255] * 128)
    gif.info["transparency"] = 0
    r = await resize(make_ctx("resize", {"image_base64": encoded(gif, "GIF"), "scale": 2, "format": "jpeg"}))
    img = open_result(r)
    assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (60, 40))

    jpeg = Image.new("RGB", (40, 40), (0, 128, 0))
    r = await resize(make_ctx("resize", {"image_base64": encoded(jpeg, "JPEG"), "width": 10}))
    assert r["format"] == "jpeg"  # defaults to the input's format
    assert open_result(r).size == (10, 10)

    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 100))
    r = await resize(make_ctx("resize", {"image_base64": encoded(rgba), "width": 5}))
    assert open_result(r).mode == "RGBA"


async def test_resize_refuses_decompression_bombs():
    bomb = Image.new("1", (8000, 6000))  # 48 MP, a few kB as PNG
    data = encoded(bomb)
    assert len(data) < 100_000
    with pytest.raises(PermanentError) as err:
        await resize(make_ctx("resize", {"image_base64": data, "width": 10}))
    assert err.value.code == "bad_input"
    assert "pixels" in err.value.message


async def test_resize_refuses_oversized_input():
    data = "A" * ((20 * 1024 * 1024) // 3 * 4 + 400)
    with pytest.raises(PermanentError) as err:
        await resize(make_ctx("resize", {"image_base64": data, "width": 10}))
    assert err.value.code == "bad_input"
    assert "20971520" in err.value.message


@pytest.mark.parametrize(
    "params, field",
    [
        ({"width": 10}, "image_base64"),
        ({"image_base64": "", "width": 10}, "image_base64"),
        ({"image_base64": "!!not base64!!", "width": 10}, "image_base64"),
        ({"image_base64": base64.b64encode(b"hello, not an image").decode(), "width": 10}, "image_base64"),
        ({"image_base64": "VALID", "width": 5000}, "width"),
        ({"image_base64": "VALID"}, "width"),
        ({"image_base64": "VALID", "scale": 0}, "scale"),
        ({"image_base64": "VALID", "scale": 1, "width": 3}, "scale"),
        ({"image_base64": "VALID", "scale": 1000}, "scale"),
        ({"image_base64": "VALID", "width": 10, "format": "tiff"}, "format"),
    ],
)
async def test_resize_bad_params(params, field):
    if params.get("image_base64") == "VALID":
        params = {**params, "image_base64": encoded(Image.new("RGB", (20, 20)))}
    with pytest.raises(PermanentError) as err:
        await resize(make_ctx("resize", params))
    assert err.value.code == "bad_input"
    assert err.value.message.startswith(f"{field}:")


# --- composition: an image step takes its parent's image (handlers/inputs.py) ----------------


def child_ctx(params: dict, parents: dict) -> JobContext:
    ctx = make_ctx("resize", params)
    ctx.parents = parents
    return ctx


async def test_resize_takes_its_parents_rendered_image():
    parent = await render(make_ctx("render", {"width": 64, "height": 36, "kind": "checker", "seed": 3}))
    r = await resize(child_ctx({"scale": 0.25}, {"image": parent}))
    img = open_result(r)
    assert img.size == (16, 9) and img.format == "PNG"
    src = open_result(parent).resize((16, 9), Image.Resampling.LANCZOS)
    assert img.convert("RGB").tobytes() == src.convert("RGB").tobytes()  # the parent's pixels


async def test_resize_chains_and_own_parameter_wins():
    first = await render(make_ctx("render", {"width": 80, "height": 40, "seed": 1}))
    second = await resize(child_ctx({"width": 40}, {"first": first}))
    third = await resize(child_ctx({"scale": 0.5}, {"second": second}))  # resize reads resize's output
    assert (third["width"], third["height"]) == (20, 10)
    own = encoded(Image.new("RGB", (10, 10), (255, 0, 0)))
    r = await resize(child_ctx({"image_base64": own, "width": 5}, {"first": first}))
    assert (r["width"], r["height"]) == (5, 5) and open_result(r).getpixel((2, 2))[:3] == (255, 0, 0)


async def test_resize_with_several_image_parents_needs_input_from():
    a = await render(make_ctx("render", {"width": 30, "height": 30, "seed": 1}))
    b = await render(make_ctx("render", {"width": 60, "height": 20, "seed": 2}))
    with pytest.raises(PermanentError) as err:
        await resize(child_ctx({"width": 10}, {"a": a, "b": b}))
    assert err.value.message.startswith("input_from:") and "a, b" in err.value.message
    r = await resize(child_ctx({"width": 30, "input_from": "b"}, {"a": a, "b": b, "text": {"text": "x"}}))
    assert (r["width"], r["height"]) == (30, 10)
    with pytest.raises(PermanentError) as err:
        await resize(child_ctx({"width": 10, "input_from": "zz"}, {"a": a}))
    assert err.value.message.startswith("input_from:")


async def test_resize_without_an_image_anywhere_names_the_field():
    with pytest.raises(PermanentError) as err:
        await resize(child_ctx({"width": 10}, {"draft": {"words": 3}, "echo": {"echo": {}}}))
    assert err.value.code == "bad_input" and err.value.message.startswith("image_base64:")
    assert "data_base64" in err.value.message  # says where else it looked
