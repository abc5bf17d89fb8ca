"""Prompt permutations and wildcards (pure logic over dynamicprompts)."""

from __future__ import annotations

import discord
import pytest

from bot.i18n import translate_template
from core.errors import InvalidField, note
from core.wildcards import (
    COMBINATION_LIMIT,
    MAX_VALUES,
    check_wildcard,
    describe_cap,
    expand,
    has_choices,
    wildcards_in,
)

ANIMALS = {"animal": ("cat", "owl", "fox")}


def test_every_combination_in_order_up_to_the_images_asked() -> None:
    made = expand("a {red|blue} __Animal__", ANIMALS, mode="all", images=4, seed=0)
    # Values come in alphabetical order, as dynamicprompts lists them.
    assert made.prompts == ("a red cat", "a red fox", "a red owl", "a blue cat")
    assert made.combinations == 6 and not made.more
    cap = describe_cap(made, note("{most} images per job at most", most=4))
    assert str(cap) == (
        "Your prompt makes 6 combinations; this job draws 4 of them (4 images per job at most)."
    )
    # The reason is a note of its own, translated inside the note that holds it.
    korean = translate_template(cap, discord.Locale.korean)  # type: ignore[arg-type]
    assert "6" in korean and "4" in korean and "작업당" in korean and "per job" not in korean
    everything = expand("{a|b}", {}, mode="all", images=4, seed=0)
    assert everything.prompts == ("a", "b") and describe_cap(everything, note("x")) is None


def test_random_picks_are_distinct_and_follow_the_seed() -> None:
    first = expand("{a|b|c|d|e|f} x", {}, mode="random", images=3, seed=7)
    assert len(set(first.prompts)) == 3
    assert first == expand("{a|b|c|d|e|f} x", {}, mode="random", images=3, seed=7)
    seeds = {
        expand("{a|b|c|d|e|f} x", {}, mode="random", images=3, seed=s).prompts for s in range(8)
    }
    assert len(seeds) > 1


def test_a_prompt_with_a_million_combinations_is_read_only_so_far() -> None:
    huge = "{a|b}" * 20
    listed = expand(huge, {}, mode="all", images=4, seed=0)
    assert listed.more and listed.combinations == COMBINATION_LIMIT
    picked = expand(huge, {}, mode="random", images=4, seed=1)
    assert len(set(picked.prompts)) == 4
    # Drawn from the whole space, not only the first thousand (which all start "aaaaaaaaa").
    assert any(not p.startswith("a" * 10) for p in picked.prompts)
    assert "over 1000 combinations" in str(
        describe_cap(picked, note("you asked for {count}", count=4))
    )


def test_unknown_wildcards_and_broken_braces_are_refused_with_the_field() -> None:
    with pytest.raises(InvalidField, match="no wildcard `__dragon__`") as unknown:
        expand("a __dragon__", ANIMALS, mode="all", images=4, seed=0)
    assert unknown.value.field == "prompt"
    with pytest.raises(InvalidField, match="not closed"):
        expand("a {red|blue fox", {}, mode="all", images=4, seed=0)
    with pytest.raises(InvalidField, match="empty"):
        expand("{|}", {}, mode="all", images=4, seed=0)


def test_syntax_of_other_kinds_passes_through() -> None:
    made = expand("(fox:1.3) [owl] {a|b}", {}, mode="all", images=4, seed=0)
    assert made.prompts == ("(fox:1.3) [owl] a", "(fox:1.3) [owl] b")
    assert not has_choices("(fox:1.3) in snow") and has_choices("__x__")
    assert wildcards_in("__A__ and __b__ and __a__") == ["a", "b"]


def test_wildcard_lists_are_checked() -> None:
    assert check_wildcard(" Big Cats ", "lion,\ntiger, lion, ") == ("big-cats", ("lion", "tiger"))
    with pytest.raises(InvalidField) as bad_name:
        check_wildcard("no!", "a")
    assert bad_name.value.field == "name"
    with pytest.raises(InvalidField, match="at least one"):
        check_wildcard("x", " , ,")
    with pytest.raises(InvalidField, match=str(MAX_VALUES)):
        check_wildcard("x", ",".join(str(n) for n in range(MAX_VALUES + 1)))
    with pytest.raises(InvalidField, match="characters"):
        check_wildcard("x", "y" * 201)
