"""Styles: a template around the user's prompt (holding ``{prompt}``) and a negative prompt
added to theirs. Built-in ones for everyone; servers add their own (``/style add``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import N_, InvalidField

MAX_TEMPLATE = 500
MAX_STYLES_PER_SERVER = 50
NAME = re.compile(r"^[a-z0-9][a-z0-9 _-]{0,31}$")


@dataclass(frozen=True, slots=True)
class Style:
    name: str
    template: str  # holds "{prompt}" once
    negative: str = ""
    builtin: bool = True

    def apply(self, prompt: str, negative: str) -> tuple[str, str]:
        """The prompt inside the template, and the style's negative after the user's own."""
        styled = self.template.replace("{prompt}", prompt.strip())
        joined = ", ".join(part for part in (negative.strip(), self.negative) if part)
        return styled, joined


BUILTIN: dict[str, Style] = {
    style.name: style
    for style in (
        Style(
            "photo",
            "photograph of {prompt}, 50mm lens, natural light, sharp focus, highly detailed",
            "painting, illustration, drawing, cartoon, blurry",
        ),
        Style(
            "cinematic",
            "cinematic still of {prompt}, dramatic lighting, shallow depth of field, film grain",
            "cartoon, illustration, flat lighting",
        ),
        Style(
            "anime",
            "anime artwork of {prompt}, vibrant colours, clean line art, studio anime style",
            "photo, realistic, 3d render",
        ),
        Style(
            "oil painting",
            "oil painting of {prompt}, visible brush strokes, rich colours, canvas texture",
            "photo, 3d render, flat colours",
        ),
        Style(
            "watercolor",
            "watercolor painting of {prompt}, soft washes, paper texture, gentle colours",
            "photo, 3d render, hard edges",
        ),
        Style(
            "pixel art",
            "pixel art of {prompt}, 16-bit, limited palette, crisp pixels",
            "blurry, smooth shading, photo",
        ),
        Style(
            "line art",
            "line art drawing of {prompt}, clean black ink lines, white background",
            "colour, shading, photo",
        ),
        Style(
            "3d render",
            "3d render of {prompt}, octane render, soft global illumination, high detail",
            "photo, painting, flat",
        ),
    )
}


def normalise_name(name: str) -> str:
    return " ".join(name.split()).lower()


def check_style(name: str, template: str, negative: str) -> Style:
    """A server's new style, validated; an ``InvalidField`` names what is wrong."""
    name = normalise_name(name)
    if not NAME.match(name):
        raise InvalidField("name", N_("A style's name is 1 to 32 letters, digits, spaces, - or _."))
    if name in BUILTIN:
        raise InvalidField(
            "name", N_("`{name}` is a built-in style: choose another name."), name=name
        )
    template = " ".join(template.split())
    if template.count("{prompt}") != 1:
        raise InvalidField(
            "template",
            N_("The template must hold `{prompt}` exactly once, where the prompt goes."),
        )
    if len(template) > MAX_TEMPLATE or len(negative) > MAX_TEMPLATE:
        raise InvalidField(
            "template", N_("Templates are at most {most} characters."), most=MAX_TEMPLATE
        )
    return Style(name, template, " ".join(negative.split()), builtin=False)
