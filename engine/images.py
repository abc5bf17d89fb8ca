"""Image helpers around a generation: metadata text, PNG chunks, safe decoding, grids, previews.

The metadata text follows the AUTOMATIC1111 web UI "parameters" format so that images made by
the bot can be dropped into the tools people already use (A1111 "PNG Info", Forge, Civitai),
and images made there can be re-run here.

Nothing here imports torch: the bot and the storage layer use these helpers without loading
the machine-learning stack.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps, PngImagePlugin

from engine.errors import N_, ValidationError

__all__ = [
    "DEFAULT_MAX_UPLOAD_BYTES",
    "DISCORD_PREVIEW_MAX_BYTES",
    "GRID_BACKGROUND",
    "PARAMETERS_KEY",
    "SUPPORTED_UPLOAD_FORMATS",
    "ParsedParameters",
    "encode_png",
    "encode_preview",
    "format_parameters",
    "grid_layout",
    "make_grid",
    "make_thumbnail",
    "open_user_image",
    "open_user_mask",
    "parse_parameters",
    "quote_value",
    "read_png_parameters",
    "sampler_to_scheduler",
    "scheduler_to_sampler",
]

DEFAULT_MAX_UPLOAD_BYTES: Final = 25 * 2**20
# Discord's default upload limit is 10 MiB; the margin leaves room for the multipart envelope
# and the other fields of the message.
DISCORD_PREVIEW_MAX_BYTES: Final = 10 * 2**20 - 64 * 1024
SUPPORTED_UPLOAD_FORMATS: Final = ("PNG", "JPEG", "WEBP", "GIF", "BMP")

# --- the A1111 "parameters" text ----------------------------------------------------------

PARAMETERS_KEY: Final = "parameters"
NEGATIVE_PREFIX: Final = "Negative prompt:"

_SCHEDULER_TO_SAMPLER: Final[dict[str, str]] = {
    "euler_a": "Euler a",
    "euler": "Euler",
    "euler_trailing": "Euler SGM Uniform",
    "ddim": "DDIM",
    "dpmpp_2m": "DPM++ 2M",
    # The pre-1.9 web UI spelling; engine.backend writes "Schedule type: Karras" instead.
    "dpmpp_2m_karras": "DPM++ 2M Karras",
    "lcm": "LCM",
    # diffusers' PNDM is the "pseudo linear multi-step" sampler that A1111 calls PLMS.
    "pndm": "PLMS",
    "unipc": "UniPC",
}
_SAMPLER_TO_SCHEDULER: Final[dict[str, str]] = {
    v.lower(): k for k, v in _SCHEDULER_TO_SAMPLER.items()
}
# Before web UI 1.9 the noise schedule was part of the sampler's name ("DPM++ 2M Karras");
# since then it is a separate "Schedule type" field. Strip it so both spellings map back.
_SCHEDULE_SUFFIXES: Final = (" karras", " exponential", " sgm uniform", " automatic")

# A quoted settings value: a JSON string, as the web UI writes and reads it. Its alternatives
# are disjoint, so a failed match costs time linear in what it scanned.
_QUOTED_RE: Final = re.compile(r'"(?:\\.|[^\\"])+"')
_KEY_RE: Final = re.compile(r"\w[\w \-/]*[\w\-/]")
# Bounded, since int() refuses strings of more than 4300 digits.
_SIZE_RE: Final = re.compile(r"([0-9]{1,9})x([0-9]{1,9})")
_STANDARD_KEYS: Final = frozenset({"Steps", "Sampler", "CFG scale", "Seed", "Size", "Model"})


def scheduler_to_sampler(scheduler: str) -> str:
    """The web UI's sampler name for one of our scheduler names ("euler_a" -> "Euler a").

    An unknown name comes back unchanged, so a scheduler added later still writes something
    a person can read.
    """
    return _SCHEDULER_TO_SAMPLER.get(scheduler, scheduler)


def sampler_to_scheduler(sampler: str, schedule_type: str | None = None) -> str | None:
    """Our scheduler name for a web UI sampler name, or None when we have no equivalent.

    ``schedule_type`` is the web UI's separate "Schedule type" setting (1.9 and later), which
    older versions folded into the sampler's name ("DPM++ 2M Karras"); both spellings give the
    same answer. A schedule we have no variant for falls back to the plain sampler. Any
    letter case and our own names are accepted too.
    """
    name = sampler.strip().lower()
    schedule = (schedule_type or "").strip().lower()
    if schedule and schedule != "automatic":
        combined = f"{name} {schedule}"  # "Euler" + "SGM Uniform": a scheduler of its own
        if combined in _SAMPLER_TO_SCHEDULER:
            return _SAMPLER_TO_SCHEDULER[combined]
    if name in _SCHEDULER_TO_SAMPLER:
        return name
    if name in _SAMPLER_TO_SCHEDULER:
        return _SAMPLER_TO_SCHEDULER[name]
    for suffix in _SCHEDULE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return _SAMPLER_TO_SCHEDULER.get(name)


def quote_value(value: str) -> str:
    """Quote a settings value as the web UI does, when leaving it bare would not read back.

    The web UI quotes values containing ',', ':' or a newline with ``json.dumps``. We also
    quote values with quotes, control characters or surrounding spaces, which the web UI
    would otherwise read back differently; its reader unquotes them all the same way.
    """
    if (
        any(c in value for c in ',:"\n')
        or value != value.strip()
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)
    ):
        return json.dumps(value, ensure_ascii=False)
    return value


def _unquote_value(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        if isinstance(decoded, str):
            return decoded
    return value


def _format_number(value: float) -> str:
    # repr round-trips exactly; the web UI writes whole guidance values without ".0".
    number = float(value)
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return repr(number)


def _clean_prompt(text: str) -> str:
    # The format has no escaping: surrounding whitespace is lost by every reader (the web UI
    # strips the whole text), and CRLF would leave stray '\r' at line ends.
    return text.replace("\r\n", "\n").strip()


def format_parameters(
    *,
    prompt: str,
    negative_prompt: str,
    steps: int,
    sampler: str,
    cfg_scale: float,
    seed: int,
    width: int,
    height: int,
    model: str,
    extra: Mapping[str, str] | None = None,
) -> str:
    """The AUTOMATIC1111 "parameters" text for one image.

    ::

        a red fox in snow
        Negative prompt: blurry
        Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 512x512, Model: tiny

    ``sampler`` is a web UI sampler name; one of our scheduler names ("euler_a") is mapped to
    it. ``extra`` adds settings after ``Model`` in order ("Denoising strength": "0.35").
    Prompts are stripped and CRLF becomes LF, so ``parse_parameters`` gives back exactly the
    cleaned prompts. The one thing the format cannot carry is a prompt line that starts with
    "Negative prompt:"; the web UI has the same ambiguity.
    """
    settings: dict[str, str] = {
        "Steps": str(int(steps)),
        "Sampler": scheduler_to_sampler(sampler),
        "CFG scale": _format_number(cfg_scale),
        "Seed": str(int(seed)),
        "Size": f"{int(width)}x{int(height)}",
        "Model": model,
    }
    for key, value in (extra or {}).items():
        if not _KEY_RE.fullmatch(key):
            raise ValueError(
                f"Setting name {key!r} cannot be read back: use letters, digits, spaces, '-' "
                "or '/', at least two characters, not ending in a space."
            )
        if key in settings:
            raise ValueError(f"Setting {key!r} is given twice.")
        settings[key] = str(value)

    line = ", ".join(f"{key}: {quote_value(value)}" for key, value in settings.items())
    negative = _clean_prompt(negative_prompt)
    parts = [_clean_prompt(prompt)]
    if negative:
        parts.append(f"{NEGATIVE_PREFIX} {negative}")
    parts.append(line)
    # Like the web UI, drop the empty first line when there is no prompt.
    return "\n".join(parts).strip("\n")


@dataclass(frozen=True, slots=True)
class ParsedParameters:
    """What ``parse_parameters`` read. A setting that is missing or unreadable is None.

    ``extra`` holds every other setting by its web UI name, unquoted, as text
    (for example ``{"Denoising strength": "0.35", "Lora hashes": "detail: 7c6bad76eb54"}``),
    plus any standard setting whose value could not be read (kept for display).
    """

    prompt: str
    negative_prompt: str = ""
    steps: int | None = None
    sampler: str | None = None
    cfg_scale: float | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    model: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def scheduler(self) -> str | None:
        """Our scheduler name for ``sampler`` (and "Schedule type"), or None if we have none."""
        if not self.sampler:
            return None
        return sampler_to_scheduler(self.sampler, self.extra.get("Schedule type"))


def _is_key_char(char: str) -> bool:
    return char.isalnum() or char in "_ -/"


def _settings_of(line: str) -> list[tuple[str, str]]:
    r"""The (key, raw value) pairs of a settings line, read as the web UI reads them.

    The web UI scans with
    ``\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)``: a key is a word
    character then words, spaces, '-' or '/'; a value is a JSON string directly followed by
    a comma or the end, else anything up to the next comma. That expression takes quadratic
    time on a long line without colons (seconds for a 10,000-character prompt), and uploaded
    files are hostile, so this reads the same grammar in one pass.
    """
    settings: list[tuple[str, str]] = []
    position, length = 0, len(line)
    while position < length:
        colon = line.find(":", position)
        if colon < 0:
            break
        start = colon
        while start > position and _is_key_char(line[start - 1]):
            start -= 1
        while start < colon and not (line[start].isalnum() or line[start] == "_"):
            start += 1
        key = line[start:colon]
        if len(key) < 2:
            # No key ends here: the web UI's scan moves on by a character, not a value.
            position = colon + 1
            continue
        cursor = colon + 1
        while cursor < length and line[cursor].isspace():
            cursor += 1
        quoted = _QUOTED_RE.match(line, cursor)
        if quoted and (quoted.end() == length or line[quoted.end()] == ","):
            value, position = quoted.group(), quoted.end() + 1
        else:
            comma = line.find(",", cursor)
            end = length if comma < 0 else comma
            value, position = line[cursor:end], end + 1
        settings.append((key, value))
    return settings


def _find_settings_line(lines: list[str]) -> int | None:
    # Our writer and the web UI start the settings line with "Steps:" and put it last, but
    # extensions (dynamic prompts' "Template:") append lines after it, so look for the last
    # "Steps:" line first and fall back to the web UI's own rule: the last line, if it holds at
    # least three settings.
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].startswith("Steps:") and len(_settings_of(lines[index])) >= 3:
            return index
    if lines and len(_settings_of(lines[-1])) >= 3:
        return len(lines) - 1
    return None


def _parse_int(value: str) -> int | None:
    try:
        return int(value.strip())
    except ValueError:
        return None


def _parse_float(value: str) -> float | None:
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def parse_parameters(text: str) -> ParsedParameters:
    """Read an AUTOMATIC1111 "parameters" text (ours or the web UI's) back into fields.

    Never raises on odd input: text without a settings line is all prompt, unknown settings go
    to ``extra``, and a standard setting whose value cannot be read stays None with its raw
    text in ``extra``.
    """
    lines = text.replace("\r\n", "\n").split("\n")
    settings_index = _find_settings_line(lines)
    if settings_index is None:
        prompt_lines, settings_line, trailing = lines, "", []
    else:
        prompt_lines = lines[:settings_index]
        settings_line = lines[settings_index]
        trailing = lines[settings_index + 1 :]

    prompt: list[str] = []
    negative: list[str] | None = None
    for line in prompt_lines:
        if negative is None and line.startswith(NEGATIVE_PREFIX):
            negative = [line[len(NEGATIVE_PREFIX) :]]
        elif negative is None:
            prompt.append(line)
        else:
            negative.append(line)

    found: dict[str, str] = {}
    for key, raw in _settings_of(settings_line):
        found[key.strip()] = _unquote_value(raw.strip())
    for line in trailing:
        key, sep, raw = line.partition(":")
        if sep and _KEY_RE.fullmatch(key.strip()):
            found.setdefault(key.strip(), _unquote_value(raw.strip()))

    extra = {key: value for key, value in found.items() if key not in _STANDARD_KEYS}
    steps = _parse_int(found["Steps"]) if "Steps" in found else None
    cfg = _parse_float(found["CFG scale"]) if "CFG scale" in found else None
    seed = _parse_int(found["Seed"]) if "Seed" in found else None
    width = height = None
    if "Size" in found:
        size = _SIZE_RE.fullmatch(found["Size"].strip())
        if size:
            width, height = int(size.group(1)), int(size.group(2))
    for key, parsed in (("Steps", steps), ("CFG scale", cfg), ("Seed", seed), ("Size", width)):
        if key in found and parsed is None:
            extra[key] = found[key]

    return ParsedParameters(
        prompt="\n".join(prompt).strip(),
        negative_prompt="\n".join(negative).strip() if negative is not None else "",
        steps=steps,
        sampler=found.get("Sampler") or None,
        cfg_scale=cfg,
        seed=seed,
        width=width,
        height=height,
        model=found.get("Model") or None,
        extra=extra,
    )


# --- PNG text chunks ----------------------------------------------------------------------

_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
# A prompt is a few kB; a compressed text chunk that inflates past this is hostile.
_MAX_TEXT_BYTES: Final = 4 * 2**20


def _is_plain_latin1(text: str) -> bool:
    # tEXt is Latin-1 with no control characters but newline; anything else goes to iTXt,
    # which is UTF-8 and which every reader of the web UI's files understands.
    return all(c == "\n" or 0x20 <= ord(c) <= 0x7E or 0xA0 <= ord(c) <= 0xFF for c in text)


def encode_png(image: Image.Image, parameters: str = "", compress_level: int = 1) -> bytes:
    """PNG bytes of ``image`` with ``parameters`` in a "parameters" text chunk (none when
    empty).

    The chunk is tEXt when the text is plain Latin-1 (what the web UI writes for such text)
    and iTXt (UTF-8) otherwise, e.g. for emoji or right-to-left prompts. NUL characters are
    dropped, since PNG text must not contain them and C readers would cut the text there.
    ``compress_level`` 1 is the fast default: a generated image barely compresses further.
    """
    # Lone surrogates cannot be written as UTF-8; replace them rather than fail a finished job.
    text = parameters.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    info = PngImagePlugin.PngInfo()
    if text:
        add = info.add_text if _is_plain_latin1(text) else info.add_itxt
        add(PARAMETERS_KEY, text)
    options: dict[str, int] = {"compress_level": compress_level}
    if 1 <= compress_level <= 3:
        # After PNG's row filters, zlib's run-length strategy is faster than level 1's default
        # and about as small as level 6 (measured: ~95 vs ~130 ms and 2.0 vs 2.2 MB for a
        # 1024x1024 photo-like image).
        options["compress_type"] = zlib.Z_RLE
    buffer = io.BytesIO()
    image.save(buffer, "PNG", pnginfo=info, **options)
    return buffer.getvalue()


def _inflate(data: bytes) -> bytes | None:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, _MAX_TEXT_BYTES)
    except zlib.error:
        return None
    return None if inflater.unconsumed_tail else out


def _text_chunk_value(kind: bytes, body: bytes) -> tuple[bytes, str] | None:
    keyword, sep, rest = body.partition(b"\x00")
    if not sep:
        return None
    if kind == b"tEXt":
        return keyword, rest.decode("latin-1")
    if kind == b"zTXt":
        raw = _inflate(rest[1:]) if rest[:1] == b"\x00" else None
        return (keyword, raw.decode("latin-1")) if raw is not None else None
    # iTXt: compression flag, method, language\0, translated keyword\0, UTF-8 text.
    if len(rest) < 2:
        return None
    compressed, method = rest[0], rest[1]
    parts = rest[2:].split(b"\x00", 2)
    if len(parts) != 3:
        return None
    value = parts[2]
    if compressed:
        inflated = _inflate(value) if method == 0 else None
        if inflated is None:
            return None
        value = inflated
    return keyword, value.decode("utf-8", "replace")


def read_png_parameters(data: bytes) -> str | None:
    """The "parameters" text of a PNG, or None when it is not a PNG or has none.

    Walks the chunks itself instead of asking Pillow, so no pixel is decoded (Pillow loads the
    image to reach text placed after the pixel data) and a damaged file gives None, not an
    exception.
    """
    if not data.startswith(_PNG_SIGNATURE):
        return None
    position = len(_PNG_SIGNATURE)
    while position + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        start = position + 8
        end = start + length
        if end + 4 > len(data):
            return None
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            found = _text_chunk_value(kind, data[start:end])
            if found is not None and found[0] == PARAMETERS_KEY.encode("latin-1"):
                return found[1]
        elif kind == b"IEND":
            return None
        position = end + 4  # skip the CRC
    return None


# --- decoding what users upload -----------------------------------------------------------

# Each message is a whole sentence, once for an image and once for a mask, so that each
# translates as a sentence (the messages are N_-marked texts; see engine.errors).
_UPLOAD_MESSAGES: Final[dict[str, dict[str, str]]] = {
    "image": {
        "empty": N_("The image is empty. Send a PNG, JPEG, WebP, GIF or BMP image."),
        "no_pixels": N_("The image has no pixels."),
        "too_many_pixels": N_(
            "The image is {width}×{height} ({megapixels} megapixels); the limit is "
            "{limit} megapixels. Send a smaller image."
        ),
        "bomb": N_(
            "The image has more than {limit} megapixels, too many to open safely. "
            "Send a smaller image."
        ),
        "too_many_bytes": N_("The image is {size}; the limit is {limit}. Send a smaller file."),
        "damaged": N_(
            "The image is damaged or incomplete (was the upload cut short?). "
            "Save it again and retry."
        ),
    },
    "mask": {
        "empty": N_("The mask is empty. Send a PNG, JPEG, WebP, GIF or BMP image."),
        "no_pixels": N_("The mask has no pixels."),
        "too_many_pixels": N_(
            "The mask is {width}×{height} ({megapixels} megapixels); the limit is "
            "{limit} megapixels. Send a smaller mask."
        ),
        "bomb": N_(
            "The mask has more than {limit} megapixels, too many to open safely. "
            "Send a smaller mask."
        ),
        "too_many_bytes": N_("The mask is {size}; the limit is {limit}. Send a smaller file."),
        "damaged": N_(
            "The mask is damaged or incomplete (was the upload cut short?). "
            "Save it again and retry."
        ),
    },
}


def _describe_bytes(count: int) -> str:
    if count >= 2**20:
        return f"{count / 2**20:.1f} MB"
    if count >= 1024:
        return f"{count / 1024:.0f} KB"
    return f"{count} bytes"


def _sniff_unsupported(data: bytes) -> str | None:
    # Name the common things people send by mistake so the error says what went wrong,
    # without handing them to Pillow's less exercised parsers. Returns the refusal (each a
    # whole sentence, so that each translates as one).
    head = data[:64]
    if head.startswith(b"%PDF"):
        return N_(
            "That file is a PDF document, which I can't use. "
            "Send a PNG, JPEG, WebP, GIF or BMP image."
        )
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return N_(
            "That file is a TIFF image, which I can't use. "
            "Send a PNG, JPEG, WebP, GIF or BMP image."
        )
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return N_(
                "That file is an AVIF image, which I can't use. "
                "Send a PNG, JPEG, WebP, GIF or BMP image."
            )
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1"):
            return N_(
                "That file is a HEIC/HEIF image, which I can't use. "
                "Send a PNG, JPEG, WebP, GIF or BMP image."
            )
        return N_(
            "That file is a video, which I can't use. Send a PNG, JPEG, WebP, GIF or BMP image."
        )
    if head.startswith((b"\x00\x00\x00\x0cJXL ", b"\xff\x0a")):
        return N_(
            "That file is a JPEG XL image, which I can't use. "
            "Send a PNG, JPEG, WebP, GIF or BMP image."
        )
    if head.startswith(b"8BPS"):
        return N_(
            "That file is a Photoshop file, which I can't use. "
            "Send a PNG, JPEG, WebP, GIF or BMP image."
        )
    if head.startswith((b"PK\x03\x04", b"\x1f\x8b", b"7z\xbc\xaf", b"Rar!")):
        return N_(
            "That file is an archive, which I can't use. Send a PNG, JPEG, WebP, GIF or BMP image."
        )
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if stripped.startswith((b"<svg", b"<?xml")):
        return N_(
            "That file is an SVG drawing, which I can't use. "
            "Send a PNG, JPEG, WebP, GIF or BMP image."
        )
    return None


def _check_pixels(width: int, height: int, max_pixels: int, what: str) -> None:
    if width <= 0 or height <= 0:
        raise ValidationError(_UPLOAD_MESSAGES[what]["no_pixels"])
    if width * height > max_pixels:
        raise ValidationError(
            _UPLOAD_MESSAGES[what]["too_many_pixels"],
            width=width,
            height=height,
            megapixels=f"{width * height / 1e6:.1f}",
            limit=f"{max_pixels / 1e6:.1f}",
        )


def _bomb_error(what: str, max_pixels: int) -> ValidationError:
    # Pillow only warns or raises above its own limit, so the image is over that limit, and
    # over ours whenever ours is the lower one.
    pillow_limit = Image.MAX_IMAGE_PIXELS or max_pixels
    limit = min(max_pixels, pillow_limit)
    return ValidationError(_UPLOAD_MESSAGES[what]["bomb"], limit=f"{limit / 1e6:.1f}")


def _decode_upload(data: bytes, *, max_pixels: int, max_bytes: int, what: str) -> Image.Image:
    """Open, size-check, fully decode and orient an upload; its mode is left as decoded."""
    if not data:
        raise ValidationError(_UPLOAD_MESSAGES[what]["empty"])
    if len(data) > max_bytes:
        raise ValidationError(
            _UPLOAD_MESSAGES[what]["too_many_bytes"],
            size=_describe_bytes(len(data)),
            limit=_describe_bytes(max_bytes),
        )
    unsupported = _sniff_unsupported(data)
    if unsupported is not None:
        raise ValidationError(unsupported)

    # Pillow's own bomb guard fires inside open() on the header size. Its warning is caught
    # as well, for processes that turn warnings into errors; by default it only logs, and our
    # own limit (always far lower in practice) rejects the image below.
    too_large = (Image.DecompressionBombError, Image.DecompressionBombWarning)
    try:
        image = Image.open(io.BytesIO(data), formats=SUPPORTED_UPLOAD_FORMATS)
    except too_large as error:
        raise _bomb_error(what, max_pixels) from error
    except Exception as error:
        # Pillow raises many types on hostile input; none of them is the user's to read.
        raise ValidationError(
            N_("That file is not an image I can read. Send a PNG, JPEG, WebP, GIF or BMP image.")
        ) from error

    # Checked on the header's size, before a single pixel is decoded: a tiny file can claim
    # billions of pixels.
    _check_pixels(image.width, image.height, max_pixels, what)
    try:
        image.load()
    except too_large as error:
        raise _bomb_error(what, max_pixels) from error
    except Exception as error:
        raise ValidationError(_UPLOAD_MESSAGES[what]["damaged"]) from error
    # A GIF frame or an odd BMP can end up larger than its header said.
    _check_pixels(image.width, image.height, max_pixels, what)

    # In place: otherwise an image that needs no turning is copied (64 MB at 4096²). Broken
    # EXIF is common from phone apps; an unrotated image beats a refusal.
    with contextlib.suppress(Exception):
        ImageOps.exif_transpose(image, in_place=True)
    return image


def _high_bit_depth_to_l(image: Image.Image) -> Image.Image:
    # Pillow's own convert() clips 16-bit and float values at 255, which turns a 16-bit
    # grayscale PNG white; rescale instead.
    array = np.asarray(image, dtype=np.float32)
    if image.mode.startswith("I;16") or (image.mode == "I" and array.max(initial=0) > 255):
        array = array / 257.0
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")


def _flatten_rgb(
    image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)
) -> Image.Image:
    """``image`` as RGB, transparent areas composited over ``background``."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        return _high_bit_depth_to_l(image).convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or ("transparency" in image.info)
    if not has_alpha:
        return image.convert("RGB")
    # Pasted through its alpha onto an RGB background: two full-size buffers fewer than
    # alpha_composite, which matters for a 4096×4096 upload (64 MB each).
    rgba = image if image.mode == "RGBA" else image.convert("RGBA")
    base = Image.new("RGB", rgba.size, background)
    base.paste(rgba, mask=rgba.getchannel("A"))
    return base


def open_user_image(
    data: bytes, *, max_pixels: int, max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
) -> Image.Image:
    """Decode an uploaded image safely into a loaded RGB image.

    Accepts PNG, JPEG, WebP, GIF (first frame) and BMP. Raises ``ValidationError`` with a
    message for the user when the data is empty, too many bytes, not an image, an unsupported
    format, damaged, or larger than ``max_pixels`` (checked on the header before decoding).
    EXIF orientation is applied and transparency is composited over white.
    """
    image = _decode_upload(data, max_pixels=max_pixels, max_bytes=max_bytes, what="image")
    try:
        return _flatten_rgb(image)
    except Exception as error:
        # Exotic modes (LAB, odd palettes) that Pillow opens but cannot convert.
        raise ValidationError(
            N_("I can't read the colours of that image. Send a PNG, JPEG, WebP, GIF or BMP image.")
        ) from error


def open_user_mask(
    data: bytes,
    *,
    size: tuple[int, int],
    max_pixels: int,
    max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
) -> Image.Image:
    """Decode an uploaded inpainting mask into a loaded "L" image (white = repaint).

    A mask with real transparency uses its alpha channel (opaque = repaint), as the web UI
    does for masks painted over a transparent layer; any other mask uses its brightness.
    ``size`` is the image's (width, height); a mask of another size is a ``ValidationError``.
    """
    mask = _decode_upload(data, max_pixels=max_pixels, max_bytes=max_bytes, what="mask")
    if mask.width != size[0] or mask.height != size[1]:
        raise ValidationError(
            N_(
                "The mask is {mask_width}×{mask_height} but the image is {width}×{height}; "
                "they must be the same size."
            ),
            mask_width=mask.width,
            mask_height=mask.height,
            width=size[0],
            height=size[1],
        )
    try:
        return _mask_channel(mask)
    except Exception as error:
        raise ValidationError(
            N_("I can't read the colours of that mask. Send a PNG, JPEG, WebP, GIF or BMP image.")
        ) from error


def _mask_channel(mask: Image.Image) -> Image.Image:
    if mask.mode in ("I", "F") or mask.mode.startswith("I;16"):
        return _high_bit_depth_to_l(mask)
    if mask.mode in ("RGBA", "LA", "PA") or "transparency" in mask.info:
        alpha = mask.convert("RGBA").getchannel("A")
        low, high = alpha.getextrema()
        if (low, high) != (255, 255):
            return alpha
    return mask.convert("L")


# --- grids --------------------------------------------------------------------------------

GRID_BACKGROUND: Final = (43, 45, 49)  # Discord's dark theme, so gaps and empty cells blend in

_LAYOUTS: Final[dict[int, tuple[tuple[int, int], ...]]] = {
    # (columns, rows), in order of preference when two are equally square.
    1: ((1, 1),),
    2: ((2, 1), (1, 2)),
    3: ((2, 2), (3, 1), (1, 3)),
    4: ((2, 2),),
}


def grid_layout(count: int, cell_size: tuple[int, int], gap: int) -> tuple[int, int]:
    """(columns, rows) for ``count`` cells of ``cell_size``: the layout closest to square."""
    if count not in _LAYOUTS:
        raise ValueError(f"A grid holds 1 to 4 images, not {count}.")
    cell_w, cell_h = cell_size

    def squareness(layout: tuple[int, int]) -> float:
        cols, rows = layout
        width = cols * cell_w + (cols - 1) * gap
        height = rows * cell_h + (rows - 1) * gap
        # Rounded so that mirror-image layouts tie exactly and the preference order decides.
        return round(abs(math.log(width / height)), 9)

    return min(_LAYOUTS[count], key=squareness)


def _default_gap(cell_w: int, cell_h: int) -> int:
    return max(2, min(cell_w, cell_h) // 128)


def obscured(image: Image.Image) -> Image.Image:
    """``image`` made unreadable for a spoiler: shrunk to a few dozen pixels and blurred
    back to its size, so no detail survives (a plain blur can be partly undone)."""
    rgb = _flatten_rgb(image)
    small = rgb.resize((max(1, rgb.width // 32), max(1, rgb.height // 32)), Image.Resampling.BOX)
    return small.resize(rgb.size, Image.Resampling.BILINEAR).filter(
        ImageFilter.GaussianBlur(max(2, min(rgb.size) // 64))
    )


WITHHELD_COLOUR = (54, 57, 63)
WITHHELD_MARK = (237, 66, 69)


def withheld_tile(width: int, height: int) -> Image.Image:
    """The cell of an image held back by the image check: a dark tile with a struck circle."""
    tile = Image.new("RGB", (width, height), WITHHELD_COLOUR)
    draw = ImageDraw.Draw(tile)
    radius = min(width, height) // 5
    cx, cy = width // 2, height // 2
    line = max(2, radius // 6)
    draw.ellipse(
        (cx - radius, cy - radius, cx + radius, cy + radius), outline=WITHHELD_MARK, width=line
    )
    offset = int(radius * 0.7)
    draw.line((cx - offset, cy + offset, cx + offset, cy - offset), fill=WITHHELD_MARK, width=line)
    return tile


def make_grid(
    images: Sequence[Image.Image],
    *,
    gap: int | None = None,
    background: tuple[int, int, int] = GRID_BACKGROUND,
) -> Image.Image:
    """One RGB image showing 1 to 4 images: the layout closest to square, with a thin gap.

    Every cell has the size of the widest by the tallest image; each image is scaled to fit
    its cell (keeping its aspect ratio) and centred, so mixed sizes look consistent. One image
    is returned as it is (as RGB). Three images fill a row, a column, or a 2x2 grid with the
    last cell empty, whichever is most square.
    """
    if not 1 <= len(images) <= 4:
        raise ValueError(f"A grid holds 1 to 4 images, not {len(images)}.")
    if len(images) == 1:
        return _flatten_rgb(images[0])
    cell_w = max(image.width for image in images)
    cell_h = max(image.height for image in images)
    spacing = _default_gap(cell_w, cell_h) if gap is None else max(0, gap)
    cols, rows = grid_layout(len(images), (cell_w, cell_h), spacing)
    grid = Image.new(
        "RGB",
        (cols * cell_w + (cols - 1) * spacing, rows * cell_h + (rows - 1) * spacing),
        background,
    )
    for index, image in enumerate(images):
        tile = _flatten_rgb(image)
        if tile.size != (cell_w, cell_h):
            scale = min(cell_w / tile.width, cell_h / tile.height)
            fitted = (
                max(1, min(cell_w, round(tile.width * scale))),
                max(1, min(cell_h, round(tile.height * scale))),
            )
            if fitted != tile.size:
                tile = tile.resize(fitted, Image.Resampling.LANCZOS)
        row, col = divmod(index, cols)
        x = col * (cell_w + spacing) + (cell_w - tile.width) // 2
        y = row * (cell_h + spacing) + (cell_h - tile.height) // 2
        grid.paste(tile, (x, y))
    return grid


SHEET_CELL: Final = 192
SHEET_GAP: Final = 6
SHEET_BACKGROUND: Final = (32, 34, 37)
SHEET_EMPTY: Final = (64, 68, 75)


def make_contact_sheet(
    tiles: Sequence[Image.Image | None],
    *,
    columns: int = 5,
    cell: int = SHEET_CELL,
) -> Image.Image:
    """A gallery page: the tiles in rows of ``columns``, each fitted into a square cell and
    numbered from 1 in its corner; ``None`` (an entry without a picture) is an empty cell
    with its number, so numbers always match the page's buttons."""
    if not tiles:
        raise ValueError("A contact sheet needs at least one tile.")
    from PIL import ImageDraw, ImageFont

    cols = max(1, min(columns, len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    sheet = Image.new(
        "RGB",
        (cols * cell + (cols + 1) * SHEET_GAP, rows * cell + (rows + 1) * SHEET_GAP),
        SHEET_BACKGROUND,
    )
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=max(12, cell // 7))
    for number, tile in enumerate(tiles, start=1):
        row, col = divmod(number - 1, cols)
        left = SHEET_GAP + col * (cell + SHEET_GAP)
        top = SHEET_GAP + row * (cell + SHEET_GAP)
        if tile is None:
            draw.rectangle((left, top, left + cell - 1, top + cell - 1), fill=SHEET_EMPTY)
        else:
            fitted = _flatten_rgb(tile).copy()
            fitted.thumbnail((cell, cell), Image.Resampling.LANCZOS)
            sheet.paste(
                fitted, (left + (cell - fitted.width) // 2, top + (cell - fitted.height) // 2)
            )
        label = str(number)
        box = draw.textbbox((0, 0), label, font=font)
        pad = max(3, cell // 40)
        badge = (left, top, left + box[2] - box[0] + 2 * pad, top + box[3] - box[1] + 2 * pad)
        draw.rectangle(badge, fill=(0, 0, 0))
        draw.text((left + pad - box[0], top + pad - box[1]), label, fill=(255, 255, 255), font=font)
    return sheet


# --- previews and thumbnails --------------------------------------------------------------

# Measured on the 2-core CI machine for a 2056x2056 grid: WebP method 0 takes ~70-130 ms on
# photo-like content (~290 ms on pure noise) against ~700 ms for method 4, for files only a
# few percent larger; JPEG without optimize takes ~10-20 ms but is ~1.7x bigger.
_WEBP_QUALITIES: Final = (80, 65, 50, 35)
_JPEG_QUALITIES: Final = (85, 70, 55, 40)
_WEBP_MAX_SIDE: Final = 16383  # libwebp's hard limit
_MIN_PREVIEW_SIDE: Final = 16


def _encode(image: Image.Image, fmt: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    if fmt == "WEBP":
        image.save(buffer, "WEBP", quality=quality, method=0)
    else:
        image.save(buffer, "JPEG", quality=quality, optimize=False)
    return buffer.getvalue()


def encode_preview(
    image: Image.Image,
    *,
    max_bytes: int = DISCORD_PREVIEW_MAX_BYTES,
    prefer: str = "webp",
) -> tuple[bytes, str]:
    """Encode ``image`` as WebP or JPEG under ``max_bytes``: (data, extension without dot).

    ``prefer`` is "webp" (smaller files) or "jpeg" (about 5-10x faster to encode). WebP is
    swapped for JPEG for images beyond WebP's 16383-pixel side limit. Quality is lowered
    first; an image far over the limit is downscaled at once, sized from the bytes per pixel
    the last attempt gave. Raises ValueError when even a tiny image cannot fit.
    """
    choice = prefer.lower()
    if choice not in ("webp", "jpeg", "jpg"):
        raise ValueError(f"prefer must be 'webp' or 'jpeg', not {prefer!r}.")
    current = _flatten_rgb(image)
    fmt = "WEBP" if choice == "webp" and max(current.size) <= _WEBP_MAX_SIDE else "JPEG"
    qualities = _WEBP_QUALITIES if fmt == "WEBP" else _JPEG_QUALITIES
    extension = "webp" if fmt == "WEBP" else "jpg"

    step = 0
    for _attempt in range(16):
        data = _encode(current, fmt, qualities[step])
        if len(data) <= max_bytes:
            return data, extension
        ratio = len(data) / max_bytes
        # Lowering quality gains maybe 30% a step; beyond that only fewer pixels help.
        if ratio <= 1.4 and step + 1 < len(qualities):
            step += 1
            continue
        scale = math.sqrt(1 / ratio) * 0.9
        size = (max(1, int(current.width * scale)), max(1, int(current.height * scale)))
        if max(size) < _MIN_PREVIEW_SIDE:
            break
        current = current.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    raise ValueError(f"Cannot encode a preview under {max_bytes} bytes.")


def make_thumbnail(image: Image.Image, max_side: int = 256) -> bytes:
    """A small WebP (RGB) whose longer side is at most ``max_side``, for galleries and storage."""
    if max_side < 1:
        raise ValueError("max_side must be at least 1.")
    thumbnail = _flatten_rgb(image).copy()
    thumbnail.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=2.0)
    buffer = io.BytesIO()
    # Small images: the slower, better method costs a few milliseconds at most.
    thumbnail.save(buffer, "WEBP", quality=75, method=4)
    return buffer.getvalue()
