"""Midjourney-style inline parameters: ``--no``, ``--ar W:H``, ``--seed``, ``--steps``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from core.errors import N_, Note, UserError, note

ASPECTS = {"1:1": 1.0, "2:3": 2 / 3, "3:2": 3 / 2, "9:16": 9 / 16, "16:9": 16 / 9}
# Phones and macOS turn a typed "--" into an em or en dash: those start a flag too.
_FLAG = re.compile(r"(?:^|\s)(?:--|\u2014|\u2013)([A-Za-z][\w-]*)")
# Flags that take one value: written twice, the last wins and the user is told.
_SINGLE_VALUED = frozenset({"ar", "aspect", "seed", "steps"})


@dataclass(frozen=True)
class InlineParameters:
    prompt: str
    negative: str | None = None
    aspect: str | None = None
    seed: int | None = None
    steps: int | None = None
    notes: tuple[Note, ...] = field(default=())  # told to the user, e.g. ignored flags


def parse_inline(prompt: str) -> InlineParameters:
    """Split ``prompt`` into the text and the parameters written after ``--flags``."""
    matches = list(_FLAG.finditer(prompt))
    if not matches:
        return InlineParameters(prompt=prompt.strip())
    text = prompt[: matches[0].start()].strip()
    negative: list[str] = []
    aspect = seed = steps = None
    notes: list[Note] = []
    given: dict[str, str] = {}  # flag -> the value written last, for repeated flags
    repeated: list[str] = []
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(prompt)
        name = match.group(1).lower()
        value = prompt[match.end() : end].strip()
        flag = "--ar" if name == "aspect" else f"--{name}"
        if name in _SINGLE_VALUED:
            if flag in given and flag not in repeated:
                repeated.append(flag)
            given[flag] = value
        if name == "no":
            if value:
                negative.append(value)
        elif name in {"ar", "aspect"}:
            aspect, rounded = closest_aspect(value)
            if rounded:
                notes.append(rounded)
        elif name == "seed":
            seed = _whole_number("--seed", value, 0, 2**32 - 1)
        elif name == "steps":
            steps = _whole_number("--steps", value, 1, 150)
        else:
            ignored = note(N_("`{flag}` is not supported here and was ignored."), flag=f"--{name}")
            if ignored not in notes:
                notes.append(ignored)
    for flag in repeated:
        notes.append(
            note(
                N_("`{flag}` was given more than once; I used the last one (`{flag} {value}`)."),
                flag=flag,
                value=given[flag][:20].replace("`", "ʹ"),
            )
        )
    return InlineParameters(
        prompt=text,
        negative=", ".join(negative) or None,
        aspect=aspect,
        seed=seed,
        steps=steps,
        notes=tuple(notes),
    )


def closest_aspect(value: str) -> tuple[str, Note | None]:
    """The supported aspect ratio nearest to ``W:H``, with a note when it is not exact."""
    match = re.fullmatch(r"\s*(\d{1,5})\s*[:x/]\s*(\d{1,5})\s*", value)
    if not match or int(match.group(2)) == 0 or int(match.group(1)) == 0:
        raise UserError(
            N_("`--ar {value}` is not an aspect ratio. Write it like `--ar 16:9`."),
            value=value[:20],
        )
    ratio = int(match.group(1)) / int(match.group(2))
    best = min(ASPECTS, key=lambda name: abs(ASPECTS[name] - ratio))
    exact = f"{match.group(1)}:{match.group(2)}"
    if exact == best:
        return best, None
    return best, note(N_("Aspect ratio {exact} was rounded to {best}."), exact=exact, best=best)


def _whole_number(flag: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise UserError(
            N_("`{flag}` needs a whole number, not `{value}`."), flag=flag, value=value[:20]
        ) from None
    if not low <= number <= high:
        raise UserError(
            N_("`{flag}` must be between {least} and {most}."), flag=flag, least=low, most=high
        )
    return number
