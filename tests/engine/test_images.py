"""engine.images: parameters text, PNG chunks, safe upload decoding, grids and previews."""

from __future__ import annotations

import io
import struct
import time
import zlib
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image, ImageFile, PngImagePlugin

from engine.errors import ValidationError
from engine.images import (
    ParsedParameters,
    encode_png,
    encode_preview,
    format_parameters,
    grid_layout,
    make_grid,
    make_thumbnail,
    open_user_image,
    open_user_mask,
    parse_parameters,
    quote_value,
    read_png_parameters,
    sampler_to_scheduler,
    scheduler_to_sampler,
)

MAX_PIXELS = 4096 * 4096

# --- helpers ------------------------------------------------------------------------------


def _params(**overrides: object) -> str:
    fields: dict[str, object] = {
        "prompt": "a red fox in snow",
        "negative_prompt": "blurry",
        "steps": 20,
        "sampler": "euler_a",
        "cfg_scale": 7.0,
        "seed": 42,
        "width": 512,
        "height": 512,
        "model": "tiny",
    }
    fields.update(overrides)
    return format_parameters(**fields)  # type: ignore[arg-type]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_with_header(width: int, height: int, idat: bytes | None = None) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` RGB but whose pixel data is tiny."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat if idat is not None else zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def _uniform_gray_png(side: int) -> bytes:
    """A valid, fully decodable PNG of side x side gray pixels that compresses to a few kB."""
    compressor = zlib.compressobj(9)
    row = b"\x00" + b"\x80" * side
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", body)
        + _png_chunk(b"IEND", b"")
    )


def _encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _solid(width: int, height: int, color: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (width, height), color)


@pytest.fixture
def no_pixel_decoding(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Records any attempt to decode pixels; the image under test must never get there."""
    calls: list[str] = []

    def refuse(self: ImageFile.ImageFile) -> None:
        calls.append(type(self).__name__)
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    yield calls
    assert calls == []


def _assert_user_safe(error: ValidationError) -> None:
    text = str(error)
    assert text and text[0].isupper()
    for leak in ("PIL", "Traceback", "cannot identify", "Error", "0x"):
        assert leak not in text


# --- format / parse -----------------------------------------------------------------------


def test_format_matches_the_web_ui_layout() -> None:
    text = _params(extra={"Denoising strength": "0.35"})
    assert text == (
        "a red fox in snow\n"
        "Negative prompt: blurry\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 512x512, Model: tiny, "
        "Denoising strength: 0.35"
    )


def test_format_omits_an_empty_negative_prompt_and_an_empty_prompt_line() -> None:
    assert _params(negative_prompt="  ").splitlines()[1].startswith("Steps: 20,")
    assert _params(prompt="", negative_prompt="").startswith("Steps: 20,")


def test_format_quotes_like_the_web_ui() -> None:
    text = _params(
        model="my, model",
        extra={"Lora hashes": "add_detail: 7c6bad76eb54", "Hires upscaler": "Latent"},
    )
    assert 'Model: "my, model"' in text
    assert 'Lora hashes: "add_detail: 7c6bad76eb54"' in text
    assert "Hires upscaler: Latent" in text
    assert quote_value("Euler a") == "Euler a"
    assert quote_value('say "hi"') == '"say \\"hi\\""'
    assert quote_value("a\nb") == '"a\\nb"'
    assert quote_value(" padded ") == '" padded "'


def test_format_cfg_scale_spelling() -> None:
    assert "CFG scale: 7," in _params(cfg_scale=7)
    assert "CFG scale: 7.5," in _params(cfg_scale=7.5)
    parsed = parse_parameters(_params(cfg_scale=0.1 + 0.2))
    assert parsed.cfg_scale == 0.1 + 0.2


@pytest.mark.parametrize("key", ["", "x", "Bad:key", "trailing ", "comma,key", "Steps"])
def test_format_refuses_setting_names_that_cannot_be_read_back(key: str) -> None:
    with pytest.raises(ValueError):
        _params(extra={key: "1"})


HOSTILE = [
    'quote " in the middle',
    '"fully quoted"',
    "comma, separated, list",
    "colon: value, (emphasis:1.3), [from:to:0.5]",
    "back\\slash and \\n literal",
    "line one\nline two\n\n  indented line four",
    "tab\tinside",
    "nul\x00inside",
    "emoji 🦊🔥 and a family 👩\u200d👩\u200d👧",
    "שלום עולם, עם פסיק",
    "مرحبا بالعالم: اختبار",
    "override \u202eevil\u202c and marks \u200f\u200e",
    "unicode line\u2028separator and \x85 next line",
    "Steps: 1, Sampler: Fake, CFG scale: 1, Seed: 2, Size: 1x1, Model: spoof",
    "mentions Negative prompt: mid-line only",
    "carriage\rreturn alone",
    "x" * 10_000,
    "word, " * 2_000 + "end",
]


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_round_trip_of_hostile_prompts(text: str) -> None:
    parsed = parse_parameters(_params(prompt=text, negative_prompt=text))
    assert parsed.prompt == text.strip()
    assert parsed.negative_prompt == text.strip()
    assert (parsed.steps, parsed.sampler, parsed.cfg_scale, parsed.seed) == (20, "Euler a", 7, 42)
    assert (parsed.width, parsed.height, parsed.model, parsed.extra) == (512, 512, "tiny", {})


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_round_trip_of_hostile_setting_values(text: str) -> None:
    parsed = parse_parameters(_params(model=text, extra={"Note": text, "After": "x"}))
    assert parsed.model == text
    assert parsed.extra == {"Note": text, "After": "x"}
    assert parsed.seed == 42


def test_round_trip_normalises_only_ends_and_crlf() -> None:
    parsed = parse_parameters(_params(prompt="  \r\n a\r\nb  \n", negative_prompt="\n"))
    assert parsed.prompt == "a\nb"
    assert parsed.negative_prompt == ""


def test_round_trip_of_numbers_and_our_scheduler_names() -> None:
    schedulers = ("euler_a", "euler", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "lcm", "pndm", "unipc")
    for scheduler in schedulers:
        parsed = parse_parameters(
            _params(sampler=scheduler, seed=2**32 - 1, steps=150, cfg_scale=1e-5, width=1216)
        )
        assert parsed.scheduler == scheduler
        assert (parsed.seed, parsed.steps, parsed.cfg_scale) == (2**32 - 1, 150, 1e-5)
        assert (parsed.width, parsed.height) == (1216, 512)


def test_sampler_mapping() -> None:
    assert scheduler_to_sampler("euler_a") == "Euler a"
    assert scheduler_to_sampler("dpmpp_2m") == "DPM++ 2M"
    assert scheduler_to_sampler("pndm") == "PLMS"
    assert scheduler_to_sampler("something_new") == "something_new"
    assert scheduler_to_sampler("dpmpp_2m_karras") == "DPM++ 2M Karras"
    assert sampler_to_scheduler("DPM++ 2M Karras") == "dpmpp_2m_karras"
    assert sampler_to_scheduler("DPM++ 2M", "Karras") == "dpmpp_2m_karras"
    assert sampler_to_scheduler("DPM++ 2M", "Automatic") == "dpmpp_2m"
    assert sampler_to_scheduler("DPM++ 2M", "Exponential") == "dpmpp_2m"
    assert sampler_to_scheduler("Euler a Karras") == "euler_a"
    assert sampler_to_scheduler("Euler", "SGM Uniform") == "euler_trailing"  # trailing steps
    assert sampler_to_scheduler("euler A") == "euler_a"
    assert sampler_to_scheduler("UniPC") == "unipc"
    assert sampler_to_scheduler("lcm") == "lcm"
    assert sampler_to_scheduler("DPM++ 2M SDE Karras") is None
    assert sampler_to_scheduler("Heun") is None


WEBUI_HIRES = (
    "masterpiece, best quality, 1girl, solo, (looking at viewer:1.2), <lora:add_detail:0.5>\n"
    "Negative prompt: (worst quality, low quality:1.4), EasyNegative, bad-hands-5\n"
    "Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 2781339475, Size: 512x768, "
    "Model hash: 7f96a1a9ca, Model: anything-v5-PrtRE, Denoising strength: 0.45, Clip skip: 2, "
    "Hires upscale: 2, Hires steps: 14, Hires upscaler: Latent, "
    'Lora hashes: "add_detail: 7c6bad76eb54", '
    'TI hashes: "EasyNegative: c74b4e810b03, bad-hands-5: aa7651be154c", Version: v1.6.0'
)

WEBUI_SCHEDULE_TYPE = (
    "a cozy cabin in the woods,\n"
    "snow, warm light from the windows\n"
    "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234567890, "
    "Size: 1024x1024, Model hash: 31e35c80fc, Model: sd_xl_base_1.0, VAE hash: 235745af8d, "
    "VAE: sdxl_vae.safetensors, Version: v1.10.1"
)

WEBUI_EXTENSIONS = (
    "portrait of a knight, {red|blue} armor\n"
    "Negative prompt: lowres,\n"
    "bad anatomy\n"
    "Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 640x960, "
    "Model hash: e6bb9ea85b, Model: realisticVision, ADetailer model: face_yolov8n.pt, "
    'ADetailer prompt: "detailed face, \\"sharp\\" eyes", ADetailer version: 23.11.1, '
    'Hires prompt: "portrait of a knight,\\nred armor", Hires upscale: 1.5, '
    "Hires upscaler: 4x-UltraSharp, Version: v1.7.0\n"
    "Template: portrait of a knight, {red|blue} armor\n"
    "Negative Template: lowres, bad anatomy"
)


def test_parse_webui_hires_output() -> None:
    parsed = parse_parameters(WEBUI_HIRES)
    assert parsed.prompt.endswith("(looking at viewer:1.2), <lora:add_detail:0.5>")
    assert parsed.negative_prompt == "(worst quality, low quality:1.4), EasyNegative, bad-hands-5"
    assert parsed.sampler == "DPM++ 2M Karras"
    assert (parsed.steps, parsed.scheduler) == (28, "dpmpp_2m_karras")
    assert (parsed.cfg_scale, parsed.seed, parsed.width, parsed.height) == (7, 2781339475, 512, 768)
    assert parsed.model == "anything-v5-PrtRE"
    assert parsed.extra["Hires upscale"] == "2"
    assert parsed.extra["Hires upscaler"] == "Latent"
    assert parsed.extra["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert parsed.extra["TI hashes"] == "EasyNegative: c74b4e810b03, bad-hands-5: aa7651be154c"
    assert parsed.extra["Version"] == "v1.6.0"
    assert "Model" not in parsed.extra and "Size" not in parsed.extra


def test_parse_webui_multiline_prompt_without_negative() -> None:
    parsed = parse_parameters(WEBUI_SCHEDULE_TYPE)
    assert parsed.prompt == "a cozy cabin in the woods,\nsnow, warm light from the windows"
    assert parsed.negative_prompt == ""
    assert (parsed.sampler, parsed.extra["Schedule type"], parsed.cfg_scale) == (
        "DPM++ 2M",
        "Karras",
        6.5,
    )
    assert parsed.model == "sd_xl_base_1.0"
    assert parsed.scheduler == "dpmpp_2m_karras"


def test_parse_webui_extension_lines_after_the_settings() -> None:
    parsed = parse_parameters(WEBUI_EXTENSIONS)
    assert parsed.prompt == "portrait of a knight, {red|blue} armor"
    assert parsed.negative_prompt == "lowres,\nbad anatomy"
    assert (parsed.seed, parsed.width, parsed.height) == (42, 640, 960)
    assert parsed.extra["ADetailer prompt"] == 'detailed face, "sharp" eyes'
    assert parsed.extra["Hires prompt"] == "portrait of a knight,\nred armor"
    assert parsed.extra["Template"] == "portrait of a knight, {red|blue} armor"
    assert parsed.extra["Negative Template"] == "lowres, bad anatomy"


def test_parse_text_without_settings_is_all_prompt() -> None:
    assert parse_parameters("just a prompt, with: colons") == ParsedParameters(
        prompt="just a prompt, with: colons"
    )
    assert parse_parameters("") == ParsedParameters(prompt="")
    parsed = parse_parameters("a cat\nNegative prompt: dogs")
    assert (parsed.prompt, parsed.negative_prompt, parsed.steps) == ("a cat", "dogs", None)


def test_parse_keeps_unreadable_standard_values_in_extra() -> None:
    parsed = parse_parameters(
        "cat\nSteps: many, Sampler: Euler, CFG scale: nan, Seed: -, Size: big, Model: m"
    )
    assert (parsed.steps, parsed.cfg_scale, parsed.seed, parsed.width) == (None, None, None, None)
    assert parsed.extra == {"Steps": "many", "CFG scale": "nan", "Seed": "-", "Size": "big"}
    assert (parsed.sampler, parsed.model) == ("Euler", "m")


def test_parse_survives_absurd_numbers() -> None:
    digits = "9" * 5000
    parsed = parse_parameters(f"x\nSteps: {digits}, Seed: {digits}, Size: {digits}x{digits}")
    assert (parsed.steps, parsed.seed, parsed.width) == (None, None, None)
    assert parsed.extra["Size"] == f"{digits}x{digits}"


def test_parse_reads_windows_line_endings() -> None:
    parsed = parse_parameters(_params(prompt="a\nb").replace("\n", "\r\n"))
    assert (parsed.prompt, parsed.negative_prompt, parsed.model) == ("a\nb", "blurry", "tiny")


def test_a_prompt_line_starting_with_negative_prompt_is_ambiguous_as_in_the_web_ui() -> None:
    # The format has no escaping; pin the behaviour the web UI itself has.
    parsed = parse_parameters(_params(prompt="cat\nNegative prompt: dog", negative_prompt=""))
    assert (parsed.prompt, parsed.negative_prompt) == ("cat", "dog")


@pytest.mark.parametrize(
    "text",
    ["a " * 200_000, "a" * 400_000, 'k: "x, ' * 50_000, "Steps: 1, a: b, c: d\n" * 20_000],
    ids=["words", "one-word", "open-quotes", "many-settings-lines"],
)
def test_parse_is_linear_on_hostile_input(text: str) -> None:
    # A backtracking settings expression needs minutes for the first of these.
    start = time.perf_counter()
    parse_parameters(text)
    assert time.perf_counter() - start < 1.0


# --- PNG text chunks ----------------------------------------------------------------------


def _chunk_kinds(data: bytes) -> list[bytes]:
    kinds, position = [], 8
    while position < len(data):
        (length,) = struct.unpack_from(">I", data, position)
        kinds.append(data[position + 4 : position + 8])
        position += 12 + length
    return kinds


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_png_round_trip(text: str) -> None:
    parameters = _params(prompt=text, negative_prompt=text)
    image = _noise(32, 24)
    data = encode_png(image, parameters)
    expected = parameters.replace("\x00", "")
    assert read_png_parameters(data) == expected
    with Image.open(io.BytesIO(data)) as reopened:
        assert reopened.info["parameters"] == expected
        assert np.array_equal(np.asarray(reopened), np.asarray(image))
    assert parse_parameters(read_png_parameters(data) or "").seed == 42


def test_png_uses_text_for_latin1_and_itxt_otherwise() -> None:
    latin = encode_png(_noise(8, 8), _params(prompt="café crème"))
    assert b"tEXtparameters\x00" in latin and b"iTXt" not in latin
    for prompt in ("fox 🦊", "שלום", "tab\there"):
        data = encode_png(_noise(8, 8), _params(prompt=prompt))
        assert b"iTXtparameters\x00" in data and b"tEXt" not in data
        assert read_png_parameters(data) == _params(prompt=prompt)


def test_png_text_comes_before_the_pixels_and_keeps_alpha() -> None:
    image = Image.new("RGBA", (4, 4), (10, 20, 30, 40))
    data = encode_png(image, "x", compress_level=6)
    kinds = _chunk_kinds(data)
    assert kinds.index(b"tEXt") < kinds.index(b"IDAT")
    with Image.open(io.BytesIO(data)) as reopened:
        assert reopened.mode == "RGBA" and reopened.getpixel((0, 0)) == (10, 20, 30, 40)


@pytest.mark.parametrize("level", [0, 1, 3, 6, 9])
def test_png_is_lossless_at_every_compress_level(level: int) -> None:
    image = _noise(64, 48)
    with Image.open(io.BytesIO(encode_png(image, "p", compress_level=level))) as reopened:
        assert np.array_equal(np.asarray(reopened), np.asarray(image))


def test_read_png_parameters_handles_other_chunk_kinds_and_places() -> None:
    for zipped in (False, True):
        info = PngImagePlugin.PngInfo()
        info.add_text("Software", "other")
        info.add_itxt("parameters", "compressed 🦊", zip=zipped)
        assert read_png_parameters(_encoded(_noise(4, 4), "PNG", pnginfo=info)) == "compressed 🦊"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "ztxt text", zip=True)
    assert read_png_parameters(_encoded(_noise(4, 4), "PNG", pnginfo=info)) == "ztxt text"
    # Text after the pixel data is legal PNG; some tools write it there.
    plain = _encoded(_noise(4, 4), "PNG")
    trailing = plain[:-12] + _png_chunk(b"tEXt", b"parameters\x00late") + plain[-12:]
    assert read_png_parameters(trailing) == "late"


def test_read_png_parameters_returns_none_for_anything_else() -> None:
    assert read_png_parameters(b"") is None
    assert read_png_parameters(b"not a png") is None
    assert read_png_parameters(_encoded(_noise(4, 4), "JPEG")) is None
    assert read_png_parameters(_encoded(_noise(4, 4), "PNG")) is None
    data = encode_png(_noise(4, 4), "hello")
    assert read_png_parameters(data[:40]) is None
    bomb = zlib.compress(b"a" * (8 * 2**20))
    hostile = _png_with_header(4, 4)[:33] + _png_chunk(b"zTXt", b"parameters\x00\x00" + bomb)
    assert read_png_parameters(hostile) is None


# --- open_user_image ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "empty"),
        (b"hello, this is a text file\n", "not an image"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "PDF"),
        (b"II*\x00\x08\x00\x00\x00" + b"\x00" * 64, "TIFF"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIC"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 32, "not an image"),
    ],
    ids=["empty", "text", "pdf", "tiff", "heic", "svg", "png-signature-only"],
)
def test_open_user_image_rejects_non_images(data: bytes, needle: str) -> None:
    with pytest.raises(ValidationError, match=needle) as caught:
        open_user_image(data, max_pixels=MAX_PIXELS)
    _assert_user_safe(caught.value)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_open_user_image_rejects_truncated_images(fmt: str) -> None:
    data = _encoded(_noise(256, 256), fmt)
    with pytest.raises(ValidationError, match="damaged or incomplete") as caught:
        open_user_image(data[: len(data) // 2], max_pixels=MAX_PIXELS)
    _assert_user_safe(caught.value)


def test_open_user_image_rejects_a_lying_header_without_decoding(
    no_pixel_decoding: list[str],
) -> None:
    data = _png_with_header(5_000, 5_000)
    assert len(data) < 200
    with pytest.raises(ValidationError, match="5000×5000") as caught:
        open_user_image(data, max_pixels=MAX_PIXELS)
    assert "limit is 16.8 megapixels" in str(caught.value)
    _assert_user_safe(caught.value)
    with pytest.raises(ValidationError, match=r"more than 16\.8 megapixels"):
        open_user_image(_png_with_header(50_000, 50_000), max_pixels=MAX_PIXELS)


def test_open_user_image_rejects_a_real_bomb_without_decoding(
    no_pixel_decoding: list[str],
) -> None:
    data = _uniform_gray_png(6000)  # 36 megapixels in ~40 kB
    assert len(data) < 100_000
    with pytest.raises(ValidationError, match="megapixels"):
        open_user_image(data, max_pixels=1024 * 1024)


def test_open_user_image_turns_pillows_bomb_guard_into_a_validation_error() -> None:
    # A caller limit above Pillow's own: Pillow's error must still become ours.
    with pytest.raises(ValidationError, match="too many to open safely"):
        open_user_image(_png_with_header(50_000, 50_000), max_pixels=10**12)
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(ValidationError):
        open_user_image(_png_with_header(10_000, 10_000), max_pixels=10**12)


def test_open_user_image_turns_the_bomb_warning_into_a_refusal_when_warnings_are_errors() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(ValidationError, match=r"more than 89\.5 megapixels"):
            open_user_image(_png_with_header(10_000, 10_000), max_pixels=10**12)


def test_open_user_image_rejects_too_many_bytes() -> None:
    data = _encoded(_noise(64, 64), "PNG")
    with pytest.raises(ValidationError, match="limit is 1 KB") as caught:
        open_user_image(data, max_pixels=MAX_PIXELS, max_bytes=1024)
    _assert_user_safe(caught.value)
    assert open_user_image(data, max_pixels=MAX_PIXELS, max_bytes=len(data)).size == (64, 64)


@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        ("PNG", {}),
        ("JPEG", {"quality": 95}),
        ("WEBP", {"lossless": True}),
        ("BMP", {}),
        ("GIF", {}),
    ],
)
def test_open_user_image_accepts_common_formats(fmt: str, options: dict[str, object]) -> None:
    source = _solid(48, 32, (200, 40, 40))
    image = open_user_image(_encoded(source, fmt, **options), max_pixels=MAX_PIXELS)
    assert (image.mode, image.size) == ("RGB", (48, 32))
    red, green, blue = image.getpixel((10, 10))  # type: ignore[misc]
    assert abs(red - 200) <= 4 and abs(green - 40) <= 4 and abs(blue - 40) <= 4
    image.getpixel((0, 0))  # already loaded: no file behind it


def test_open_user_image_takes_the_first_gif_frame() -> None:
    frames = [_solid(16, 16, (255, 0, 0)), _solid(16, 16, (0, 0, 255))]
    data = _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert open_user_image(data, max_pixels=MAX_PIXELS).getpixel((8, 8)) == (255, 0, 0)


def test_open_user_image_composites_transparency_on_white() -> None:
    rgba = Image.new("RGBA", (4, 2), (255, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 255, 128))
    rgba.putpixel((2, 0), (0, 255, 0, 255))
    image = open_user_image(_encoded(rgba, "PNG"), max_pixels=MAX_PIXELS)
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((1, 0)) in {(127, 127, 255), (126, 126, 255), (128, 128, 255)}
    assert image.getpixel((2, 0)) == (0, 255, 0)
    webp = open_user_image(_encoded(rgba, "WEBP", lossless=True), max_pixels=MAX_PIXELS)
    assert webp.getpixel((0, 0)) == (255, 255, 255)
    palette = rgba.convert("RGB").convert("P")
    palette.info["transparency"] = palette.getpixel((3, 1))
    gif = open_user_image(_encoded(palette, "GIF", transparency=0), max_pixels=MAX_PIXELS)
    assert gif.mode == "RGB"


def test_open_user_image_scales_16_bit_grayscale() -> None:
    deep = Image.fromarray(np.full((8, 8), 0x8080, dtype=np.uint16))
    assert deep.mode.startswith("I;16")
    image = open_user_image(_encoded(deep, "PNG"), max_pixels=MAX_PIXELS)
    assert image.getpixel((4, 4)) == (128, 128, 128)


def test_open_user_image_honours_exif_orientation() -> None:
    source = Image.new("RGB", (40, 20), (0, 0, 255))
    source.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90° clockwise
    image = open_user_image(_encoded(source, "JPEG", exif=exif, quality=95), max_pixels=MAX_PIXELS)
    assert image.size == (20, 40)
    top = image.getpixel((10, 5))
    bottom = image.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # type: ignore[index]
    assert bottom[2] > 200 and bottom[0] < 60  # type: ignore[index]


def test_open_user_image_ignores_broken_exif() -> None:
    data = _encoded(_solid(16, 8, (0, 128, 0)), "JPEG", exif=b"Exif\x00\x00garbage")
    assert open_user_image(data, max_pixels=MAX_PIXELS).size == (16, 8)


# --- open_user_mask -----------------------------------------------------------------------


def test_open_user_mask_from_brightness() -> None:
    mask = Image.new("RGB", (32, 16), (0, 0, 0))
    mask.paste((255, 255, 255), (0, 0, 16, 16))
    result = open_user_mask(_encoded(mask, "PNG"), size=(32, 16), max_pixels=MAX_PIXELS)
    assert result.mode == "L"
    assert (result.getpixel((4, 4)), result.getpixel((28, 4))) == (255, 0)


def test_open_user_mask_uses_alpha_when_the_mask_is_painted_on_transparency() -> None:
    mask = Image.new("RGBA", (32, 16), (0, 0, 0, 0))
    mask.paste((0, 0, 0, 255), (0, 0, 16, 16))  # painted black strokes, opaque
    result = open_user_mask(_encoded(mask, "PNG"), size=(32, 16), max_pixels=MAX_PIXELS)
    assert (result.getpixel((4, 4)), result.getpixel((28, 4))) == (255, 0)
    opaque = Image.new("RGBA", (32, 16), (255, 255, 255, 255))
    result = open_user_mask(_encoded(opaque, "PNG"), size=(32, 16), max_pixels=MAX_PIXELS)
    assert result.getpixel((0, 0)) == 255


def test_open_user_mask_rejects_another_size_and_bad_data() -> None:
    data = _encoded(Image.new("L", (30, 16)), "PNG")
    with pytest.raises(ValidationError, match="30×16 but the image is 32×16") as caught:
        open_user_mask(data, size=(32, 16), max_pixels=MAX_PIXELS)
    _assert_user_safe(caught.value)
    with pytest.raises(ValidationError, match="mask is empty"):
        open_user_mask(b"", size=(32, 16), max_pixels=MAX_PIXELS)


# --- grids --------------------------------------------------------------------------------

SQUARE, WIDE, TALL, PANORAMA, PORTRAIT = (64, 64), (128, 72), (72, 128), (160, 64), (48, 96)


@pytest.mark.parametrize(
    ("count", "size", "expected"),
    [
        (2, SQUARE, (2, 1)),
        (2, TALL, (2, 1)),
        (2, WIDE, (1, 2)),
        (2, PANORAMA, (1, 2)),
        (3, SQUARE, (2, 2)),
        (3, WIDE, (1, 3)),  # 16:9: a column of three is the most square
        (3, TALL, (3, 1)),
        (3, PORTRAIT, (3, 1)),
        (4, SQUARE, (2, 2)),
        (4, PANORAMA, (2, 2)),
        (4, TALL, (2, 2)),
    ],
)
def test_grid_layout(count: int, size: tuple[int, int], expected: tuple[int, int]) -> None:
    assert grid_layout(count, size, 2) == expected
    cols, rows = expected
    gap = 3
    grid = make_grid([_noise(*size, seed=i) for i in range(count)], gap=gap)
    assert grid.size == (cols * size[0] + (cols - 1) * gap, rows * size[1] + (rows - 1) * gap)


def test_grid_places_each_image_in_its_cell_with_a_gap() -> None:
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    grid = make_grid([_solid(64, 64, c) for c in colors], gap=4, background=(1, 2, 3))
    assert grid.size == (132, 132)
    assert [grid.getpixel(p) for p in ((32, 32), (100, 32), (32, 100), (100, 100))] == colors
    assert grid.getpixel((65, 10)) == (1, 2, 3)  # the gap


def test_grid_of_three_leaves_the_last_cell_empty() -> None:
    grid = make_grid([_solid(64, 64, (200, 0, 0))] * 3, gap=4, background=(9, 9, 9))
    assert grid.getpixel((100, 100)) == (9, 9, 9)
    assert grid.getpixel((32, 100)) == (200, 0, 0)


def test_grid_of_one_is_the_image() -> None:
    image = _noise(40, 30)
    assert make_grid([image]) is image
    assert make_grid([image.convert("RGBA")]).mode == "RGB"


def test_grid_scales_mixed_sizes_to_a_common_cell() -> None:
    big, small = _solid(128, 128, (255, 0, 0)), _solid(64, 64, (0, 0, 255))
    grid = make_grid([big, small], gap=0)
    assert grid.size == (256, 128)
    assert grid.getpixel((128 + 2, 2)) == (0, 0, 255)  # upscaled to fill its cell

    tall, wide = _solid(64, 96, (255, 0, 0)), _solid(96, 64, (0, 0, 255))
    grid = make_grid([tall, wide], gap=0, background=(0, 0, 0))
    assert grid.size == (192, 96)  # cells of 96x96
    assert grid.getpixel((2, 48)) == (0, 0, 0)  # letterbox beside the tall image
    assert grid.getpixel((48, 48)) == (255, 0, 0)
    assert grid.getpixel((96 + 48, 2)) == (0, 0, 0)  # letterbox above the wide image
    assert grid.getpixel((96 + 48, 48)) == (0, 0, 255)


def test_grid_default_gap_is_thin() -> None:
    grid = make_grid([_noise(512, 512), _noise(512, 512)])
    assert grid.size == (1024 + 4, 512)


@pytest.mark.parametrize("count", [0, 5])
def test_grid_refuses_other_counts(count: int) -> None:
    with pytest.raises(ValueError):
        make_grid([_noise(8, 8)] * count)


# --- previews and thumbnails --------------------------------------------------------------


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize(
    ("prefer", "fmt", "ext"), [("webp", "WEBP", "webp"), ("jpeg", "JPEG", "jpg")]
)
def test_encode_preview_fits_a_small_limit(prefer: str, fmt: str, ext: str) -> None:
    data, extension = encode_preview(_noise(1024, 1024), max_bytes=50_000, prefer=prefer)
    assert len(data) <= 50_000
    assert extension == ext
    decoded = _decode(data)
    assert decoded.format == fmt
    assert 64 <= decoded.width < 1024 and decoded.width == decoded.height


def test_encode_preview_keeps_full_size_when_it_fits() -> None:
    image = _noise(64, 48).resize((640, 480), Image.Resampling.BICUBIC)
    data, extension = encode_preview(image)
    assert extension == "webp" and _decode(data).size == (640, 480)
    data, extension = encode_preview(image.convert("RGBA"), prefer="jpeg")
    assert extension == "jpg" and _decode(data).size == (640, 480)


def test_encode_preview_falls_back_to_jpeg_past_webps_size_limit() -> None:
    data, extension = encode_preview(Image.new("RGB", (16_400, 8)), max_bytes=10**6)
    assert extension == "jpg" and _decode(data).format == "JPEG"


def test_encode_preview_refuses_impossible_limits_and_unknown_formats() -> None:
    with pytest.raises(ValueError):
        encode_preview(_noise(256, 256), max_bytes=10)
    with pytest.raises(ValueError):
        encode_preview(_noise(8, 8), prefer="gif")


def test_encode_preview_of_a_grid_is_fast_enough() -> None:
    # The hot path after every generation; a loose bound that still catches a runaway loop
    # or a slow encoder setting (measured: ~0.3 s WebP, ~0.02 s JPEG for noise on 2 cores).
    grid = make_grid([_noise(1024, 1024, seed=i) for i in range(4)])
    for prefer, bound in (("webp", 2.0), ("jpeg", 0.5)):
        start = time.perf_counter()
        data, _ = encode_preview(grid, prefer=prefer)
        assert time.perf_counter() - start < bound
        assert _decode(data).size == grid.size


def test_make_thumbnail() -> None:
    data = make_thumbnail(_noise(1024, 512).convert("RGBA"))
    thumbnail = _decode(data)
    assert (thumbnail.format, thumbnail.size, thumbnail.mode) == ("WEBP", (256, 128), "RGB")
    assert _decode(make_thumbnail(_noise(100, 50), max_side=64)).size == (64, 32)
    assert _decode(make_thumbnail(_noise(30, 20))).size == (30, 20)
    with pytest.raises(ValueError):
        make_thumbnail(_noise(8, 8), max_side=0)
