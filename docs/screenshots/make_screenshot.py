"""Screenshots of a real result message for the README.

Nothing here is drawn from imagination: the script starts the project's fake Discord
(``tests/fakediscord``), runs the real bot against it in its own process (``python -m bot``,
the built-in ``tiny`` test model, whose random weights draw noise), sends ``/imagine`` as a
user would, and renders the message the bot posted -- its embed, its buttons and the image it
uploaded, byte for byte -- as an HTML page in Discord's dark theme. Headless Chromium
screenshots that page.

    . .venv/bin/activate
    apt-get install chromium fonts-noto-color-emoji fonts-open-sans   # once, as root
    python docs/screenshots/make_screenshot.py

writes ``docs/screenshots/result-message.png`` (the finished message),
``docs/screenshots/progress-message.png`` (an earlier version of the same message, mid-way
through generation, with its progress bar and preview), ``single-image.png`` (U1's upscale,
with the single-image view's buttons) and ``compare.png`` (its Compare answer: the grid image
beside its upscale). ``--html-only`` writes the HTML pages instead, for a browser.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import html
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image, ImageChops

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "tests"))

from fakediscord.process import BotProcess, start_bot_process  # noqa: E402
from fakediscord.server import FakeDiscord  # noqa: E402

DEFAULT_PROMPT = "a lighthouse on a cliff at sunset, oil painting"
MAX_PNG_BYTES = 300_000
BACKGROUND = (0x31, 0x33, 0x38)  # Discord's dark chat background, #313338

# The bundled registry's tiny entry, at the largest size its presets allow (256 px instead of
# 64 px), so that the grid fills the embed as a real model's would. Only the size differs.
REGISTRY_TOML = """\
default = "tiny"

[models.tiny]
source = "builtin:tiny"
description = "Built-in tiny SD 1.5-layout model with random weights: its images are noise."
width = {size}
height = {size}
"""


@dataclass
class Snapshot:
    """One visible state of a message, with what Discord shows around it."""

    author: str
    invoker: str
    command: str
    created: datetime
    content: str
    embeds: list[dict[str, Any]]
    components: list[dict[str, Any]]
    files: dict[str, bytes]
    names: dict[int, str] = field(default_factory=dict)


# -- driving the bot --------------------------------------------------------------------------


def is_result(message: Any) -> bool:
    return bool(message and message.attachments and "U1" in message.button_labels)


def progress_of(version: Any) -> int | None:
    """The percentage a progress version shows, or None for other versions."""
    for embed in version.embeds:
        match = re.search(r"(\d+)% · step", embed.get("description") or "")
        if match:
            return int(match.group(1))
    return None


async def wait_until(predicate: Any, bot: BotProcess, limit_s: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not predicate():
        if bot.returncode is not None:
            raise SystemExit(f"the bot exited ({bot.returncode}):\n{bot.output[-4000:]}")
        if loop.time() > deadline:
            raise SystemExit(f"timed out waiting for {what}; bot output:\n{bot.output[-4000:]}")
        await asyncio.sleep(0.05)


async def capture(args: argparse.Namespace) -> dict[str, Snapshot]:
    """Run the bot against the fake Discord; return its messages to picture, by file name."""
    with tempfile.TemporaryDirectory(prefix="dc-screenshot-") as tmp:
        registry = Path(tmp) / "models.toml"
        registry.write_text(REGISTRY_TOML.format(size=args.size), encoding="utf-8")
        env = {
            "DATA_DIR": str(Path(tmp) / "data"),
            "MODELS_FILE": str(registry),
            "DEFAULT_MODEL": "tiny",
            "PREVIEW_EVERY": str(args.preview_every),
            "PROGRESS_EDIT_INTERVAL_S": "0.3",
            "LOG_LEVEL": "WARNING",
        }
        async with FakeDiscord() as fake:
            bot = await start_bot_process(fake, env=env, cwd=ROOT)
            try:
                await wait_until(
                    lambda: fake.sync_count() > 0 and fake.session is not None,
                    bot,
                    90,
                    "the bot to connect",
                )
                options: dict[str, Any] = {"prompt": args.prompt, "seed": args.seed}
                if args.steps:
                    options["steps"] = args.steps
                ix = await fake.send_slash_command("imagine", options, user=fake.alice)
                await ix.response()
                message = await ix.wait_for_original(is_result, timeout=300)
                upscale = await fake.click_button(message, label="U1", user=fake.alice)
                await upscale.response()
                single = await upscale.wait_for_message(
                    lambda m: bool(m.attachments) and "Compare" in m.button_labels, timeout=300
                )
                compare = await fake.click_button(single, label="Compare", user=fake.alice)
                await compare.response()
                compared = await compare.wait_for_message(lambda m: bool(m.attachments), 120)
                problems = list(fake.problems)
            finally:
                await bot.stop()
        if problems:
            print("warning: the fake Discord recorded problems:", *problems, sep="\n  ")

        names = {}
        for member in fake.guild.members.values():
            names[member.user.id] = member.nick or member.user.global_name or member.user.username
        meta = message.interaction_metadata or {}
        user = meta.get("user") or {}
        common = {
            "author": message.author.global_name or message.author.username,
            "invoker": user.get("global_name") or user.get("username") or "someone",
            "command": meta.get("name") or "imagine",
            "created": message.created_at.astimezone(),
            "names": names,
        }
        snaps = {
            name: Snapshot(
                content=shown.content,
                embeds=shown.embeds,
                components=shown.components,
                files={a.filename: a.data for a in shown.attachments},
                **common,
            )
            for name, shown in (
                ("result-message", message),
                ("single-image", single),
                ("compare", compared),
            )
        }
        # Earlier versions of the same message: the progress edits, some with a preview image.
        with_preview = [v for v in message.versions if progress_of(v) and v.attachments]
        if not with_preview:
            print("warning: no progress edit with a preview was recorded; no progress picture")
            return snaps
        version = min(with_preview, key=lambda v: abs((progress_of(v) or 0) - 50))
        snaps["progress-message"] = Snapshot(
            content=version.content,
            embeds=version.embeds,
            components=version.components,
            files={a.filename: a.data for a in version.attachments},
            **common,
        )
        return snaps


# -- rendering as Discord does ----------------------------------------------------------------

CSS = """
* { box-sizing: border-box; }
html, body { margin: 0; background: #313338; }
body {
  font-family: "gg sans", "Noto Sans", "Open Sans", "Helvetica Neue", Helvetica, Arial,
    "Noto Color Emoji", sans-serif;
  color: #dbdee1; font-size: 16px; line-height: 1.375; width: 640px; padding: 16px 0 12px;
  -webkit-font-smoothing: antialiased;
}
.emoji { font-family: "Noto Color Emoji", sans-serif; font-weight: normal; }
.message { position: relative; padding: 2px 48px 2px 72px; }
.reply { position: relative; display: flex; align-items: center; height: 22px;
  font-size: 14px; color: #b5bac1; margin-bottom: 4px; white-space: nowrap; }
.reply::before { content: ""; position: absolute; left: -36px; top: 10px; width: 30px;
  height: 14px; border-left: 2px solid #4e5058; border-top: 2px solid #4e5058;
  border-top-left-radius: 6px; }
.reply .mini { width: 16px; height: 16px; border-radius: 50%; margin-right: 4px;
  background: #3ba55c; }
.reply .who { color: #f2f3f5; font-weight: 500; margin-right: 4px; opacity: .64; }
.reply .cmd { color: #00a8fc; margin-left: 4px; }
.avatar { position: absolute; left: 16px; top: 28px; width: 40px; height: 40px;
  border-radius: 50%; background: #5865f2; display: flex; align-items: center;
  justify-content: center; }
.avatar svg { width: 24px; height: 24px; }
.header { display: flex; align-items: center; gap: 4px; height: 22px; }
.name { color: #f2f3f5; font-weight: 500; font-size: 16px; }
.tag { background: #5865f2; color: #fff; font-size: 10px; font-weight: 600; height: 15px;
  line-height: 15px; padding: 0 4px; border-radius: 3px; text-transform: uppercase;
  margin-left: 2px; }
.time { color: #949ba4; font-size: 12px; margin-left: 4px; }
.content { white-space: pre-wrap; }
.embed { display: inline-grid; max-width: 516px; margin-top: 2px; background: #2b2d31;
  border-left: 4px solid #1e1f22; border-radius: 4px; padding: 8px 16px 16px 12px; }
.embed .title { color: #f2f3f5; font-weight: 600; font-size: 16px; margin-top: 8px; }
.embed .description { font-size: 14px; line-height: 18px; margin-top: 8px;
  white-space: pre-line; }
.embed .image { margin-top: 16px; }
.embed .image img { display: block; border-radius: 4px; max-width: 400px; max-height: 400px; }
.embed .footer { font-size: 12px; line-height: 16px; font-weight: 500; margin-top: 8px; }
code { font-family: "DejaVu Sans Mono", Consolas, monospace; font-size: 85%;
  background: #1e1f22; border: 1px solid #1e1f22; border-radius: 4px; padding: 0 .2em; }
.mention { background: rgba(88, 101, 242, .3); color: #c9cdfb; font-weight: 500;
  border-radius: 3px; padding: 0 2px; }
.rows { margin-top: 4px; }
.row { display: flex; gap: 8px; margin-top: 8px; }
.button { display: flex; align-items: center; justify-content: center; gap: 4px;
  height: 32px; min-width: 60px; padding: 2px 16px; border-radius: 8px; color: #fff;
  font-size: 14px; font-weight: 500; background: #4e5058; }
.button.primary { background: #5865f2; }
.button.success { background: #248046; }
.button.danger { background: #da373c; }
.button.link { background: #4e5058; }
.button.disabled { opacity: .5; }
.button .emoji { font-size: 18px; line-height: 20px; }
"""

BUTTON_STYLES = {1: "primary", 2: "secondary", 3: "success", 4: "danger", 5: "link"}

# Discord's default avatar (the fake bot has none): a white "Clyde" face on the blurple disc.
DEFAULT_AVATAR = (
    '<svg viewBox="0 0 24 24" fill="#fff"><path d="M19.7 5.3A16.4 16.4 0 0 0 15.6 4l-.5 1a15'
    " 15 0 0 0-6.2 0l-.5-1a16.4 16.4 0 0 0-4.1 1.3C1.7 9.2 1 13 1.3 16.7a16.5 16.5 0 0 0 5 2.5"
    "l1.1-1.7a10.7 10.7 0 0 1-1.7-.8l.4-.3a11.7 11.7 0 0 0 11.8 0l.4.3c-.5.3-1.1.6-1.7.8l1.1 1.7"
    "a16.5 16.5 0 0 0 5-2.5c.4-4.3-.7-8-2.9-11.4ZM8.5 14.5c-1 0-1.8-.9-1.8-2s.8-2 1.8-2 1.8.9"
    ' 1.8 2-.8 2-1.8 2Zm7 0c-1 0-1.8-.9-1.8-2s.8-2 1.8-2 1.8.9 1.8 2-.8 2-1.8 2Z"/></svg>'
)

_EMOJI = re.compile(
    "([\u2190-\u21ff\u2300-\u23ff\u2460-\u27bf\u2b00-\u2bff\U0001f000-\U0001faff]\ufe0f?)"
)
_INLINE = re.compile(
    r"(`[^`]+`|\*\*[^*]+\*\*|\*[^*]+\*|__[^_]+__|<@!?\d+>|<#\d+>|<t:\d+(?::[a-zA-Z])?>)"
)


def emoji_html(text: str) -> str:
    """Escape ``text`` and give emoji the colour-emoji font (Discord draws them as images)."""
    out = []
    for part in _EMOJI.split(text):
        if part and _EMOJI.fullmatch(part):
            glyph = part if part.endswith("\ufe0f") else part + "\ufe0f"
            out.append(f'<span class="emoji">{html.escape(glyph)}</span>')
        else:
            out.append(html.escape(part))
    return "".join(out)


def markdown(text: str, names: dict[int, str]) -> str:
    """The part of Discord's markdown the bot uses: code, bold, italics, mentions, times."""
    out = []
    for part in _INLINE.split(text):
        if not part:
            continue
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
        elif part.startswith("**") and part.endswith("**") and len(part) > 4:
            out.append(f"<strong>{markdown(part[2:-2], names)}</strong>")
        elif part.startswith("__") and part.endswith("__") and len(part) > 4:
            out.append(f"<u>{markdown(part[2:-2], names)}</u>")
        elif part.startswith("*") and part.endswith("*") and len(part) > 2:
            out.append(f"<em>{markdown(part[1:-1], names)}</em>")
        elif part.startswith("<@"):
            user_id = int(part.strip("<@!>"))
            label = names.get(user_id, "unknown-user")
            out.append(f'<span class="mention">@{html.escape(label)}</span>')
        elif part.startswith("<#"):
            out.append(f'<span class="mention">#{html.escape(part[2:-1])}</span>')
        elif part.startswith("<t:"):
            moment = datetime.fromtimestamp(int(part[3:-1].split(":")[0])).astimezone()
            out.append(f"<code>{moment:%H:%M}</code>")
        else:
            out.append(emoji_html(part))
    return "".join(out)


def data_uri(data: bytes) -> str:
    kind = "png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "jpeg"
    return f"data:image/{kind};base64,{base64.b64encode(data).decode()}"


def embed_html(embed: dict[str, Any], snap: Snapshot) -> str:
    colour = embed.get("color")
    style = f' style="border-left-color: #{colour:06x}"' if colour is not None else ""
    parts = []
    author = embed.get("author", {}).get("name")
    if author:
        parts.append(f'<div class="author">{emoji_html(author)}</div>')
    if embed.get("title"):
        parts.append(f'<div class="title">{markdown(embed["title"], snap.names)}</div>')
    if embed.get("description"):
        text = markdown(embed["description"], snap.names)
        parts.append(f'<div class="description">{text}</div>')
    for item in embed.get("fields", []):
        parts.append(
            f'<div class="description"><strong>{markdown(item["name"], snap.names)}</strong>'
            f"<br>{markdown(item['value'], snap.names)}</div>"
        )
    url = (embed.get("image") or {}).get("url", "")
    if url.startswith("attachment://") and url[len("attachment://") :] in snap.files:
        data = snap.files[url[len("attachment://") :]]
        parts.append(f'<div class="image"><img src="{data_uri(data)}" alt=""></div>')
    if (embed.get("footer") or {}).get("text"):
        parts.append(f'<div class="footer">{emoji_html(embed["footer"]["text"])}</div>')
    return f'<div class="embed"{style}>{"".join(parts)}</div>'


def button_html(button: dict[str, Any]) -> str:
    classes = ["button", BUTTON_STYLES.get(button.get("style", 2), "secondary")]
    if button.get("disabled"):
        classes.append("disabled")
    inner = ""
    emoji = (button.get("emoji") or {}).get("name")
    if emoji:
        inner += f'<span class="emoji">{html.escape(emoji.removesuffix(chr(0xFE0F)))}\ufe0f</span>'
    if button.get("label"):
        inner += f"<span>{emoji_html(button['label'])}</span>"
    if button.get("style") == 5:
        inner += "<span>&#x2197;</span>"
    return f'<div class="{" ".join(classes)}">{inner}</div>'


def components_html(components: list[dict[str, Any]]) -> str:
    rows = []
    for row in components:
        if row.get("type") != 1:
            continue
        buttons = [button_html(c) for c in row.get("components", []) if c.get("type") == 2]
        rows.append(f'<div class="row">{"".join(buttons)}</div>')
    return f'<div class="rows">{"".join(rows)}</div>' if rows else ""


def page_html(snap: Snapshot) -> str:
    when = f"Today at {snap.created:%H:%M}"
    reply = (
        '<div class="reply"><span class="mini"></span>'
        f'<span class="who">{html.escape(snap.invoker)}</span>used'
        f'<span class="cmd">/{html.escape(snap.command)}</span></div>'
    )
    header = (
        f'<div class="header"><span class="name">{html.escape(snap.author)}</span>'
        f'<span class="tag">App</span><span class="time">{when}</span></div>'
    )
    content = (
        f'<div class="content">{markdown(snap.content, snap.names)}</div>' if snap.content else ""
    )
    embeds = "".join(f"<div>{embed_html(e, snap)}</div>" for e in snap.embeds)
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>Diffusion Chat</title>'
        f"<style>{CSS}</style></head><body>"
        f'<div class="message">{reply}<div class="avatar">{DEFAULT_AVATAR}</div>'
        f"{header}{content}{embeds}{components_html(snap.components)}</div></body></html>"
    )


# -- screenshot -------------------------------------------------------------------------------


def find_chromium(explicit: str | None) -> str:
    for name in [explicit, "chromium", "chromium-browser", "google-chrome"]:
        if name and shutil.which(name):
            return str(shutil.which(name))
    raise SystemExit(
        "Chromium not found: install it (Debian: apt-get install chromium fonts-noto-color-emoji "
        "fonts-open-sans) or pass --chromium PATH"
    )


def screenshot(page: str, out: Path, chromium: str, scale: float) -> None:
    with tempfile.TemporaryDirectory(prefix="dc-chromium-") as tmp:
        source = Path(tmp) / "page.html"
        source.write_text(page, encoding="utf-8")
        raw = Path(tmp) / "shot.png"
        command = [
            chromium,
            "--headless",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--mute-audio",
            f"--user-data-dir={Path(tmp) / 'profile'}",
            f"--force-device-scale-factor={scale}",
            "--window-size=640,1200",
            "--virtual-time-budget=3000",
            f"--screenshot={raw}",
            source.as_uri(),
        ]
        if os.geteuid() == 0:
            command.insert(2, "--no-sandbox")
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0 or not raw.exists():
            raise SystemExit(f"Chromium failed ({result.returncode}):\n{result.stderr[-3000:]}")
        image = Image.open(raw).convert("RGB")
    save_small(crop_to_content(image, round(8 * scale)), out)


def crop_to_content(image: Image.Image, pad: int) -> Image.Image:
    """Cut the empty chat background below and beside the message."""
    background = Image.new("RGB", image.size, BACKGROUND)
    box = ImageChops.difference(image, background).getbbox()
    if box is None:
        return image
    left, top, right, bottom = box
    return image.crop(
        (
            max(0, left - 2 * pad),
            max(0, top - pad),
            min(image.width, right + 2 * pad),
            min(image.height, bottom + pad),
        )
    )


def save_small(image: Image.Image, out: Path) -> None:
    """A lossless PNG if it is small enough, else one with a 256-colour palette."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    if buffer.tell() > MAX_PNG_BYTES:
        buffer = io.BytesIO()
        palette = image.quantize(
            colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
        )
        palette.save(buffer, "PNG", optimize=True)
    out.write_bytes(buffer.getvalue())
    print(f"wrote {out} ({image.width}x{image.height}, {buffer.tell() // 1024} KB)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--steps", type=int, default=30, help="denoising steps (0: model default)")
    parser.add_argument("--preview-every", type=int, default=5, help="steps between previews")
    parser.add_argument("--size", type=int, default=256, help="tiny model's image size (px)")
    parser.add_argument("--scale", type=float, default=1.0, help="device pixel ratio")
    parser.add_argument("--out-dir", type=Path, default=HERE)
    parser.add_argument("--chromium", help="the Chromium binary (default: from PATH)")
    parser.add_argument("--html-only", action="store_true", help="write the HTML pages only")
    args = parser.parse_args(argv)

    pages = asyncio.run(capture(args))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    chromium = None if args.html_only else find_chromium(args.chromium)
    for name, snap in pages.items():
        page = page_html(snap)
        if chromium is None:
            target = args.out_dir / f"{name}.html"
            target.write_text(page, encoding="utf-8")
            print(f"wrote {target}")
        else:
            screenshot(page, args.out_dir / f"{name}.png", chromium, args.scale)


if __name__ == "__main__":
    main()
