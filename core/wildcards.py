"""Prompt permutations and wildcards, read by ``dynamicprompts``: ``{red|blue} fox`` makes one
prompt per choice, ``__animal__`` one per value of the server's ``animal`` list (moderators
manage them with /wildcard). A job draws every combination (``all``, the first ones) or some
at random (``random``); each becomes one image of the job."""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from dynamicprompts.generators import CombinatorialPromptGenerator, RandomPromptGenerator
from dynamicprompts.wildcards import WildcardManager
from pyparsing import ParseBaseException

from core.errors import N_, InvalidField, Note, note

ExpandMode = Literal["all", "random"]
EXPAND_MODES: Final = ("all", "random")
MAX_WILDCARDS_PER_SERVER: Final = 50
MAX_VALUES: Final = 200
MAX_VALUE_CHARS: Final = 200
# Combinations read at most: enough to choose from at random, bounded however many a prompt
# makes ({a|b} twenty times over makes a million).
COMBINATION_LIMIT: Final = 1000

_NAME = re.compile(r"[a-z0-9_-]{1,32}")
_WILDCARD = re.compile(r"__([^_\s][^\s]*?)__")


@dataclass(frozen=True, slots=True)
class Expansion:
    prompts: tuple[str, ...]  # one per image, in order
    combinations: int  # how many the prompt makes, up to COMBINATION_LIMIT
    more: bool  # it makes more than COMBINATION_LIMIT


def normalise_name(name: str) -> str:
    return name.strip().strip("_").lower().replace(" ", "-")


def check_wildcard(name: str, values: str) -> tuple[str, tuple[str, ...]]:
    """A wildcard's name and values as a moderator typed them (values separated by commas or
    new lines), checked; raises ``InvalidField``."""
    normalised = normalise_name(name)
    if not _NAME.fullmatch(normalised):
        raise InvalidField(
            "name", N_("A wildcard's name is 1 to 32 letters, digits, - or _ (used as __name__).")
        )
    parts = [part.strip() for part in re.split(r"[,\n]", values)]
    kept = tuple(dict.fromkeys(part for part in parts if part))
    if not kept:
        raise InvalidField("values", N_("Give at least one value, separated by commas."))
    if len(kept) > MAX_VALUES:
        raise InvalidField("values", N_("A wildcard holds at most {most} values."), most=MAX_VALUES)
    if any(len(value) > MAX_VALUE_CHARS for value in kept):
        raise InvalidField(
            "values", N_("Each value is at most {most} characters."), most=MAX_VALUE_CHARS
        )
    return normalised, kept


def has_choices(prompt: str) -> bool:
    """Whether ``prompt`` may hold {…|…} choices or __wildcards__ (a cheap first look)."""
    return "{" in prompt or "__" in prompt


def wildcards_in(prompt: str) -> list[str]:
    return list(dict.fromkeys(match[1].lower() for match in _WILDCARD.finditer(prompt)))


def expand(
    prompt: str,
    wildcards: Mapping[str, Sequence[str]],
    *,
    mode: ExpandMode,
    images: int,
    seed: int,
) -> Expansion:
    """Up to ``images`` prompts from ``prompt``: its first combinations (``all``) or a
    random sample of them without repeats, drawn from ``seed`` (``random``)."""
    for name in wildcards_in(prompt):
        if name not in wildcards:
            raise InvalidField(
                "prompt",
                N_("There is no wildcard `__{name}__` here: /wildcard list shows this server's."),
                name=name[:32],
            )
    # Names are matched in any case, as /wildcard stores them.
    prompt = _WILDCARD.sub(lambda match: f"__{match[1].lower()}__", prompt)
    manager = WildcardManager(root_map={"": [{k: list(v) for k, v in wildcards.items()}]})
    try:
        listed = _distinct(
            CombinatorialPromptGenerator(manager).generate(
                prompt, max_prompts=COMBINATION_LIMIT + 1
            )
        )
        more = len(listed) > COMBINATION_LIMIT
        listed = listed[:COMBINATION_LIMIT]
        if not listed:
            raise InvalidField("prompt", N_("Every choice in the prompt is empty."))
        wanted = max(1, min(images, len(listed)))
        if mode == "all":
            chosen = listed[:wanted]
        elif more:
            # Too many to list: draw from all of them, not from the first thousand.
            drawn = RandomPromptGenerator(manager, seed=seed).generate(
                prompt, num_images=wanted * 4
            )
            chosen = _distinct(drawn)[:wanted]
        else:
            chosen = random.Random(seed).sample(listed, wanted)
    except ParseBaseException:
        raise InvalidField(
            "prompt", N_("The prompt's choices are not closed: write them as {red|green|blue}.")
        ) from None
    return Expansion(tuple(chosen), len(listed), more)


def _distinct(prompts: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(text.strip() for text in prompts if text.strip()))


def describe_cap(expansion: Expansion, reason: Note) -> Note | None:
    """Why a job draws fewer images than its prompt makes; None when it draws them all."""
    drawn = len(expansion.prompts)
    if drawn >= expansion.combinations and not expansion.more:
        return None
    if expansion.more:
        return note(
            N_(
                "Your prompt makes over {limit} combinations; this job draws {drawn} of them "
                "({reason})."
            ),
            limit=COMBINATION_LIMIT,
            drawn=drawn,
            reason=reason,
        )
    return note(
        N_("Your prompt makes {total} combinations; this job draws {drawn} of them ({reason})."),
        total=expansion.combinations,
        drawn=drawn,
        reason=reason,
    )
