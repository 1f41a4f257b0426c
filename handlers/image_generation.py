"""The `image_generation` engine: procedural images (`render`) and resizing (`resize`) with Pillow.

Owns: the generators (gradient, noise, checker), input decoding with its limits (20 MB of
encoded data, 40 megapixels, a fixed set of input formats, checked before pixels are decoded,
so decompression bombs are refused), and the encoded-output shape both handlers return:
{"format", "width", "height", "bytes", "sha256", "data_base64"}; `data_base64` is where a
child step (`resize`) finds its parent's image (handlers/inputs.py). Pillow work runs in
`asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import random
from typing import Any

from PIL import Image

from app import JobContext, PermanentError, handler
from handlers.inputs import image_input

MAX_SIDE = 4096
MAX_INPUT_BYTES = 20 * 1024 * 1024
MAX_INPUT_PIXELS = 40_000_000
# A job's result is stored in one MongoDB document (16 MiB); base64 adds a third.
MAX_OUTPUT_BYTES = 11 * 1024 * 1024
INPUT_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
KINDS = ("gradient", "noise", "checker")
FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG"}


def _bad(field: str, reason: str) -> PermanentError:
    return PermanentError("bad_input", f"{field}: {reason}")


def _int(params: dict, name: str, default: int | None, lo: int, hi: int) -> int:
    value = params.get(name, default)
    if value is None:
        raise _bad(name, "is required")
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(name, "must be an integer")
    if not lo <= value <= hi:
        raise _bad(name, f"must be between {lo} and {hi}")
    return value


def _choice(params: dict, name: str, default: str | None, options) -> str:
    value = params.get(name, default)
    if not isinstance(value, str) or value.lower() not in options:
        raise _bad(name, f"must be one of {', '.join(options)}")
    return value.lower()


def _colors(seed: int, n: int) -> list[tuple[int, int, int]]:
    rng = random.Random(seed)
    return [(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(n)]


def generate(kind: str, width: int, height: int, seed: int, cell: int) -> Image.Image:
    """A deterministic RGB image: the same arguments give the same pixels."""
    size = (width, height)
    if kind == "noise":
        return Image.frombytes("RGB", size, random.Random(seed).randbytes(width * height * 3))
    c1, c2 = _colors(seed, 2)
    if kind == "gradient":  # c1 to c2 in one of four directions, chosen by the seed
        mask = Image.linear_gradient("L")  # 256 x 256, black at the top
        turn = (None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)[
            random.Random(seed).randrange(4)
        ]
        mask = mask.transpose(turn) if turn is not None else mask
        return Image.composite(
            Image.new("RGB", size, c2), Image.new("RGB", size, c1), mask.resize(size, Image.Resampling.BILINEAR)
        )
    # checker: build one row for each phase, then stack rows (fast even at 4096 x 4096)
    a, b = bytes(c1), bytes(c2)
    row_a = b"".join(a if (x // cell) % 2 == 0 else b for x in range(width))
    row_b = b"".join(b if (x // cell) % 2 == 0 else a for x in range(width))
    return Image.frombytes("RGB", size, b"".join(row_a if (y // cell) % 2 == 0 else row_b for y in range(height)))


def encode(img: Image.Image, fmt: str, quality: int) -> dict[str, Any]:
    """Encode as PNG or JPEG and describe the result."""
    pil_format = FORMATS[fmt]
    if pil_format == "JPEG" and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format=pil_format, **({"quality": quality} if pil_format == "JPEG" else {"optimize": False}))
    data = buf.getvalue()
    if len(data) > MAX_OUTPUT_BYTES:
        raise PermanentError(
            "output_too_large",
            f"the encoded image is {len(data)} bytes, over {MAX_OUTPUT_BYTES}; use a smaller size or jpeg",
        )
    return {
        "format": "jpeg" if pil_format == "JPEG" else "png",
        "width": img.width,
        "height": img.height,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "data_base64": base64.b64encode(data).decode("ascii"),
    }


def decode(data_b64: str) -> Image.Image:
    """Decode and fully load an input image, refusing oversized or unsupported data."""
    if len(data_b64) > (MAX_INPUT_BYTES + 2) // 3 * 4 + 4:
        raise _bad("image_base64", f"decodes to more than {MAX_INPUT_BYTES} bytes")
    try:
        raw = base64.b64decode("".join(data_b64.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise _bad("image_base64", f"not valid base64 ({e})") from e
    if len(raw) > MAX_INPUT_BYTES:
        raise _bad("image_base64", f"decodes to more than {MAX_INPUT_BYTES} bytes")
    try:
        img = Image.open(io.BytesIO(raw), formats=INPUT_FORMATS)  # reads the header only
        if img.width * img.height > MAX_INPUT_PIXELS:  # checked before any pixel is decoded
            raise _bad("image_base64", f"{img.width}x{img.height} is over {MAX_INPUT_PIXELS} pixels")
        img.load()
    except PermanentError:
        raise
    except Image.DecompressionBombError as e:  # Pillow's own, larger limit, raised by open()
        raise _bad("image_base64", f"refused as a decompression bomb ({e})") from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # UnidentifiedImageError is an OSError
        raise _bad("image_base64", f"not a readable {'/'.join(INPUT_FORMATS)} image ({e})") from e
    return img


def _target_size(params: dict, width: int, height: int) -> tuple[int, int]:
    has_w, has_h, has_scale = "width" in params, "height" in params, "scale" in params
    if has_scale and (has_w or has_h):
        raise _bad("scale", "give scale or width/height, not both")
    if has_scale:
        scale = params["scale"]
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale <= 64:
            raise _bad("scale", "must be a number in (0, 64]")
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        if max(size) > MAX_SIDE:
            raise _bad("scale", f"gives {size[0]}x{size[1]}, over {MAX_SIDE} pixels a side")
        return size
    if not (has_w or has_h):
        raise _bad("width", "give width and/or height, or scale")
    w = _int(params, "width", None, 1, MAX_SIDE) if has_w else None
    h = _int(params, "height", None, 1, MAX_SIDE) if has_h else None
    if w is None:  # keep the aspect ratio
        w = max(1, round(width * h / height))
    elif h is None:
        h = max(1, round(height * w / width))
    if max(w, h) > MAX_SIDE:
        raise _bad("width" if has_w else "height", f"gives {w}x{h}, over {MAX_SIDE} pixels a side")
    return w, h


def _resize(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    if img.mode not in ("RGB", "RGBA", "L", "LA"):
        has_alpha = "A" in img.mode or "transparency" in img.info
        img = img.convert("RGBA" if has_alpha else "RGB")
    return img.resize(size, Image.Resampling.LANCZOS)


async def _stage(ctx: JobContext, percent: float, stage: str) -> None:
    if ctx.cancelled.is_set():
        raise asyncio.CancelledError()
    await ctx.progress(percent, stage=stage)


@handler(engine="image_generation", operation="render")
async def render(ctx: JobContext) -> dict:
    """Render a gradient, noise or checker image of `width` x `height` from `seed`."""
    p = ctx.params
    width = _int(p, "width", None, 1, MAX_SIDE)
    height = _int(p, "height", None, 1, MAX_SIDE)
    kind = _choice(p, "kind", "gradient", KINDS)
    seed = _int(p, "seed", 0, -(2**63), 2**63 - 1)
    fmt = _choice(p, "format", "png", tuple(FORMATS))
    quality = _int(p, "quality", 90, 1, 95)
    cell = _int(p, "cell", max(1, min(width, height) // 8), 1, MAX_SIDE)
    await _stage(ctx, 5, "generating")
    img = await asyncio.to_thread(generate, kind, width, height, seed, cell)
    await _stage(ctx, 50, "encoding")
    result = await asyncio.to_thread(encode, img, fmt, quality)
    await ctx.progress(100, stage="done")
    return result


@handler(engine="image_generation", operation="resize")
async def resize(ctx: JobContext) -> dict:
    """Resize an image to `width` x `height` (one of them keeps the aspect) or by `scale`.

    The image is `image_base64`, or in a workflow the parent's image (`data_base64` of a
    `render` or `resize` step; `input_from` picks among several): see handlers/inputs.py."""
    p = ctx.params
    data = image_input(ctx)
    quality = _int(p, "quality", 90, 1, 95)
    await _stage(ctx, 5, "decoding")
    img = await asyncio.to_thread(decode, data)
    fmt = _choice(p, "format", "jpeg" if img.format == "JPEG" else "png", tuple(FORMATS))
    size = _target_size(p, img.width, img.height)
    await _stage(ctx, 30, "resizing")
    out = await asyncio.to_thread(_resize, img, size)
    await _stage(ctx, 70, "encoding")
    result = await asyncio.to_thread(encode, out, fmt, quality)
    await ctx.progress(100, stage="done")
    return result
