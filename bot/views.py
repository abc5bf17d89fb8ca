"""Buttons that survive restarts: each custom_id carries the action and the job; the database
holds the state. Clicks are routed to the bot's ``ButtonActions`` (see ``bot.actions``)."""

from __future__ import annotations

import base64
import binascii
import enum
import re
from typing import Any, Protocol

import discord

from bot.i18n import translate, translate_marked
from core.errors import N_

# Versioned and prefixed, so old messages keep working and other bots' ids never collide.
PREFIX = "dc:1"
MAX_CUSTOM_ID = 100


class Action(enum.StrEnum):
    UPSCALE = "up"
    VARIATION = "var"
    VARY_SUBTLE = "vsub"
    VARY_STRONG = "vstr"
    REROLL = "re"
    FAVOURITE = "fav"
    DELETE = "del"
    INFO = "info"
    CANCEL = "cancel"
    VARY_REGION = "vreg"  # opens the region chooser
    REGION_LEFT = "rgl"  # the chooser's buttons: each opens the "what goes there" modal
    REGION_RIGHT = "rgr"
    REGION_TOP = "rgt"
    REGION_BOTTOM = "rgb"
    REGION_CENTRE = "rgc"
    REGION_BOX = "rgx"
    ZOOM_OUT_2 = "zoom"
    ZOOM_OUT_15 = "zoomh"
    ZOOM_CUSTOM = "zoomc"
    PAN_LEFT = "panl"
    PAN_RIGHT = "panr"
    PAN_UP = "panu"
    PAN_DOWN = "pand"
    COMPARE = "cmp"
    EDIT = "edit"  # crop, rotate, flip, tone, filter: opens the Edit modal
    GOOD = "good"  # 👍: the result is good (feedback on quality, counted per model)
    BAD = "bad"  # 👎
    OPEN = "open"  # a library entry, in a message of its own
    BROWSE = "see"  # another image of an opened entry, in the same message
    SHARE = "share"
    GALLERY_REMOVE = "unlist"


class Pager(enum.StrEnum):
    """The lists of page buttons from before saved library views (their ids still work)."""

    FAVOURITES = "favs"
    HISTORY = "hist"


def job_custom_id(action: Action, job_id: str, index: int | None = None) -> str:
    suffix = "" if index is None else f":{index}"
    custom_id = f"{PREFIX}:{action.value}:{job_id}{suffix}"
    assert len(custom_id) <= MAX_CUSTOM_ID
    return custom_id


class ButtonHandler(Protocol):
    """Where clicks go: the bot's ``actions`` (``bot.actions.ButtonActions``)."""

    async def on_job_button(
        self,
        interaction: discord.Interaction[Any],
        action: Action,
        job_id: str,
        index: int | None,
    ) -> None: ...

    async def on_page(
        self,
        interaction: discord.Interaction[Any],
        kind: Pager,
        user_id: int,
        page: int,
        search: str | None = None,
    ) -> None: ...

    async def on_library_page(
        self, interaction: discord.Interaction[Any], view_id: str, page: int
    ) -> None: ...

    async def on_forget(self, interaction: discord.Interaction[Any], user_id: int) -> None: ...

    async def on_favourite_pick(
        self, interaction: discord.Interaction[Any], job_id: str, chosen: list[int]
    ) -> None: ...

    async def on_edit_modal(
        self,
        interaction: discord.Interaction[Any],
        job_id: str,
        index: int,
        fields: tuple[str, str, str, str],
    ) -> None: ...

    async def on_prompt_modal(
        self,
        interaction: discord.Interaction[Any],
        action: Action,
        job_id: str,
        index: int,
        prompt: str,
        negative: str,
        extra: str | None,
    ) -> None: ...


def _handler(interaction: discord.Interaction[Any]) -> ButtonHandler:
    handler: ButtonHandler = interaction.client.actions
    return handler


class JobButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=re.compile(
        rf"{PREFIX}:(?P<action>[a-z]+):(?P<job>[A-Za-z0-9_-]{{1,40}})(?::(?P<index>\d))?"
    ),
):
    def __init__(
        self,
        action: Action,
        job_id: str,
        index: int | None = None,
        *,
        label: str | None = None,
        emoji: str | None = None,
        style: discord.ButtonStyle = discord.ButtonStyle.secondary,
        row: int | None = None,
    ) -> None:
        self.action = action
        self.job_id = job_id
        self.index = index
        super().__init__(
            discord.ui.Button(
                label=label,
                emoji=emoji,
                style=style,
                custom_id=job_custom_id(action, job_id, index),
            ),
            row=row,
        )

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
    ) -> JobButton:
        try:
            action = Action(match["action"])
        except ValueError:
            action = Action.INFO  # an id from a future version: show what we know
        index = int(match["index"]) if match["index"] is not None else None
        return cls(action, match["job"], index)

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _handler(interaction).on_job_button(interaction, self.action, self.job_id, self.index)


class LibraryPageButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    # The saved view holds the question (search, filters, sort); the id only says which page.
    # "lib-pg" has a hyphen, so JobButton's "<action>:<job>:<index>" ids never match it.
    template=re.compile(rf"{PREFIX}:lib-pg:(?P<view>[A-Za-z0-9_-]{{1,24}}):(?P<page>\d{{1,5}})"),
):
    def __init__(self, view_id: str, page: int, *, label: str, disabled: bool = False) -> None:
        self.view_id = view_id
        self.page = page
        super().__init__(
            discord.ui.Button(
                label=label,
                style=discord.ButtonStyle.secondary,
                disabled=disabled,
                custom_id=f"{PREFIX}:lib-pg:{view_id}:{page}",
            ),
            row=2,
        )

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
    ) -> LibraryPageButton:
        return cls(match["view"], int(match["page"]), label="·")

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _handler(interaction).on_library_page(interaction, self.view_id, self.page)


class PageButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    # The search, when there is one, rides along base64url-encoded (ids from before searches
    # existed have none).
    template=re.compile(
        rf"{PREFIX}:pg:(?P<kind>[a-z]+):(?P<user>\d{{1,20}}):(?P<page>\d{{1,5}})"
        r"(?::(?P<search>[A-Za-z0-9_-]{1,56}))?"
    ),
):
    def __init__(
        self,
        kind: Pager,
        user_id: int,
        page: int,
        *,
        label: str,
        disabled: bool = False,
        search: str | None = None,
    ) -> None:
        self.kind = kind
        self.user_id = user_id
        self.page = page
        self.search = search
        carried = f":{encode_search(search)}" if search else ""
        super().__init__(
            discord.ui.Button(
                label=label,
                style=discord.ButtonStyle.secondary,
                disabled=disabled,
                custom_id=f"{PREFIX}:pg:{kind.value}:{user_id}:{page}{carried}",
            )
        )

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
    ) -> PageButton:
        try:
            kind = Pager(match["kind"])
        except ValueError:
            kind = Pager.HISTORY  # an id from a future version: show something sensible
        search = decode_search(match["search"]) if match["search"] else None
        return cls(kind, int(match["user"]), int(match["page"]), label="·", search=search)

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _handler(interaction).on_page(
            interaction, self.kind, self.user_id, self.page, self.search
        )


MAX_SEARCH_BYTES = 42  # base64url of 42 bytes is 56 characters: the id stays under 100


def encode_search(text: str) -> str:
    data = text.encode("utf-8")[:MAX_SEARCH_BYTES]
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def decode_search(encoded: str) -> str | None:
    try:
        data = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (ValueError, binascii.Error):
        return None
    return data.decode("utf-8", errors="ignore") or None


class ForgetButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    # "forget-me" has a hyphen, so JobButton's "<action>:<job>" ids never match it.
    template=re.compile(rf"{PREFIX}:forget-me:(?P<user>\d{{1,20}})"),
):
    def __init__(self, user_id: int, locale: discord.Locale | None = None) -> None:
        self.user_id = user_id
        super().__init__(
            discord.ui.Button(
                label=translate("Delete everything", locale),
                style=discord.ButtonStyle.danger,
                custom_id=f"{PREFIX}:forget-me:{user_id}",
            )
        )

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
    ) -> ForgetButton:
        return cls(int(match["user"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _handler(interaction).on_forget(interaction, self.user_id)


def forget_view(user_id: int, locale: discord.Locale | None) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(ForgetButton(user_id, locale))
    return view


def progress_view(job_id: str, locale: discord.Locale | None) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(
        JobButton(
            Action.CANCEL,
            job_id,
            label=translate("Cancel", locale),
            emoji="✖",
            style=discord.ButtonStyle.danger,
        )
    )
    return view


def grid_view(job_id: str, count: int, withheld: frozenset[int] = frozenset()) -> discord.ui.View:
    """U1..Un and V1..Vn per image (none for an image the image check held back), then
    reroll, favourite, delete and info."""
    view = discord.ui.View(timeout=None)
    shown = [i for i in range(count) if i not in withheld]
    for i in shown:
        view.add_item(JobButton(Action.UPSCALE, job_id, i, label=f"U{i + 1}", row=0))
    for i in shown:
        view.add_item(JobButton(Action.VARIATION, job_id, i, label=f"V{i + 1}", row=1))
    _add_common(view, job_id, row=2, reroll=True)
    _add_feedback(view, job_id, row=3)
    return view


def single_view(
    job_id: str, locale: discord.Locale | None, *, can_upscale: bool, has_parent: bool
) -> discord.ui.View:
    """One image (an upscale, a variation, a zoom...), as Midjourney users expect: vary it,
    upscale it again where the size allows, zoom out, pan, and compare it with its parent."""
    view = discord.ui.View(timeout=None)
    for action, label, emoji in (
        (Action.VARY_SUBTLE, N_("Vary (Subtle)"), "🪄"),
        (Action.VARY_STRONG, N_("Vary (Strong)"), "🌀"),
        (Action.VARY_REGION, N_("Vary (Region)"), "🖌"),
    ):
        view.add_item(
            JobButton(action, job_id, 0, label=translate_marked(label, locale), emoji=emoji, row=0)
        )
    if can_upscale:
        upscale = translate("Upscale", locale)
        view.add_item(JobButton(Action.UPSCALE, job_id, 0, label=upscale, emoji="🔼", row=0))
    for action, label in (
        (Action.ZOOM_OUT_2, N_("Zoom Out 2x")),
        (Action.ZOOM_OUT_15, N_("Zoom Out 1.5x")),
        (Action.ZOOM_CUSTOM, N_("Custom Zoom")),
    ):
        view.add_item(
            JobButton(action, job_id, 0, label=translate_marked(label, locale), emoji="🔍", row=1)
        )
    edit = translate("Edit", locale)
    view.add_item(JobButton(Action.EDIT, job_id, 0, label=edit, emoji="✂", row=1))
    for action, emoji in (
        (Action.PAN_LEFT, "⬅"),
        (Action.PAN_RIGHT, "➡"),
        (Action.PAN_UP, "⬆"),
        (Action.PAN_DOWN, "⬇"),
    ):
        view.add_item(JobButton(action, job_id, 0, emoji=emoji, row=2))
    _add_common(view, job_id, row=3, reroll=False)
    if has_parent:
        compare = translate("Compare", locale)
        view.add_item(JobButton(Action.COMPARE, job_id, 0, label=compare, emoji="🆚", row=3))
    _add_feedback(view, job_id, row=4)
    return view


def _add_feedback(view: discord.ui.View, job_id: str, *, row: int) -> None:
    view.add_item(JobButton(Action.GOOD, job_id, emoji="👍", row=row))
    view.add_item(JobButton(Action.BAD, job_id, emoji="👎", row=row))


REGION_CHOICES = (
    (Action.REGION_LEFT, N_("Left half")),
    (Action.REGION_RIGHT, N_("Right half")),
    (Action.REGION_TOP, N_("Top half")),
    (Action.REGION_BOTTOM, N_("Bottom half")),
    (Action.REGION_CENTRE, N_("Centre")),
    (Action.REGION_BOX, N_("A box…")),
)


def region_view(job_id: str, index: int, locale: discord.Locale | None) -> discord.ui.View:
    """Vary (Region): which part of the image to repaint."""
    view = discord.ui.View(timeout=None)
    for number, (action, label) in enumerate(REGION_CHOICES):
        view.add_item(
            JobButton(action, job_id, index, label=translate_marked(label, locale), row=number // 3)
        )
    return view


class FavouritePicker(
    discord.ui.DynamicItem[discord.ui.Select[Any]],
    template=re.compile(rf"{PREFIX}:fav-pick:(?P<job>[A-Za-z0-9_-]{{1,40}})"),
):
    """⭐ under a grid: choose which of its images to keep as favourites."""

    def __init__(
        self,
        job_id: str,
        count: int = 4,
        starred: frozenset[int] = frozenset(),
        locale: discord.Locale | None = None,
    ) -> None:
        self.job_id = job_id
        super().__init__(
            discord.ui.Select(
                custom_id=f"{PREFIX}:fav-pick:{job_id}",
                placeholder=translate("Choose the images to star", locale),
                min_values=0,
                max_values=count,
                options=[
                    discord.SelectOption(
                        label=translate("Image {number}", locale, number=index + 1),
                        value=str(index),
                        default=index in starred,
                    )
                    for index in range(count)
                ],
            )
        )

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
    ) -> FavouritePicker:
        return cls(match["job"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        data: dict[str, Any] = dict(interaction.data or {})
        values: list[Any] = list(data.get("values") or [])
        chosen = [int(value) for value in values if str(value).isdigit()]
        await _handler(interaction).on_favourite_pick(interaction, self.job_id, chosen)


def favourite_picker_view(
    job_id: str, count: int, starred: frozenset[int], locale: discord.Locale | None
) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(FavouritePicker(job_id, count, starred, locale))
    return view


class PromptModal(discord.ui.Modal):
    """Remix, Custom Zoom and Vary (Region): the prompt to use (and, for some, one more
    field), then the action runs with it. A modal lives minutes: it needs no persistence."""

    def __init__(
        self,
        *,
        title: str,
        action: Action,
        job_id: str,
        index: int,
        prompt: str,
        negative: str,
        extra: tuple[str, str, str] | None = None,  # label, placeholder, default
        locale: discord.Locale | None = None,
    ) -> None:
        super().__init__(
            title=title, timeout=900, custom_id=f"{PREFIX}:modal-{action.value}:{job_id}"
        )
        self.action = action
        self.job_id = job_id
        self.index = index
        self.prompt: discord.ui.TextInput[Any] = discord.ui.TextInput(
            label=translate("Prompt", locale),
            custom_id="prompt",
            style=discord.TextStyle.paragraph,
            default=prompt[:4000],
            max_length=4000,
        )
        self.negative: discord.ui.TextInput[Any] = discord.ui.TextInput(
            label=translate("Negative prompt", locale),
            custom_id="negative",
            required=False,
            default=negative[:1000] or None,
            max_length=1000,
        )
        self.add_item(self.prompt)
        self.add_item(self.negative)
        self.extra: discord.ui.TextInput[Any] | None = None
        if extra is not None:
            label, placeholder, default = extra
            self.extra = discord.ui.TextInput(
                label=label,
                custom_id="extra",
                placeholder=placeholder,
                default=default or None,
                max_length=40,
            )
            self.add_item(self.extra)

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        await _handler(interaction).on_prompt_modal(
            interaction,
            self.action,
            self.job_id,
            self.index,
            self.prompt.value,
            self.negative.value,
            None if self.extra is None else self.extra.value,
        )


def _add_common(view: discord.ui.View, job_id: str, *, row: int, reroll: bool) -> None:
    if reroll:
        view.add_item(JobButton(Action.REROLL, job_id, emoji="🔄", row=row))
    view.add_item(JobButton(Action.FAVOURITE, job_id, emoji="⭐", row=row))
    view.add_item(JobButton(Action.DELETE, job_id, emoji="🗑", row=row))
    view.add_item(JobButton(Action.INFO, job_id, emoji="ℹ", row=row))
    view.add_item(JobButton(Action.SHARE, job_id, emoji="📤", row=row))


def library_page_view(
    view_id: str,
    page: int,
    page_count: int,
    entries: list[tuple[str, int | None]],
    locale: discord.Locale | None,
) -> discord.ui.View:
    """Numbered buttons opening each entry (job id, image index), then previous and next."""
    view = discord.ui.View(timeout=None)
    for number, (job_id, index) in enumerate(entries, start=1):
        view.add_item(
            JobButton(Action.OPEN, job_id, index, label=str(number), row=(number - 1) // 5)
        )
    view.add_item(
        LibraryPageButton(
            view_id, max(0, page - 1), label=translate("◀ Previous", locale), disabled=page <= 0
        )
    )
    view.add_item(
        LibraryPageButton(
            view_id,
            page + 1,
            label=translate("Next ▶", locale),
            disabled=page + 1 >= page_count,
        )
    )
    return view


def entry_view(
    job_id: str,
    index: int,
    locale: discord.Locale | None,
    *,
    indexes: list[int],
    can_upscale: bool,
    owner: bool,
    removable: bool,
    rerollable: bool = True,
) -> discord.ui.View:
    """An opened library entry: act on this image, step to the job's other images, share
    it (its owner), take it out of the gallery (a moderator)."""
    view = discord.ui.View(timeout=None)
    subtle, strong = translate("Vary (Subtle)", locale), translate("Vary (Strong)", locale)
    view.add_item(JobButton(Action.VARY_SUBTLE, job_id, index, label=subtle, emoji="🪄", row=0))
    view.add_item(JobButton(Action.VARY_STRONG, job_id, index, label=strong, emoji="🌀", row=0))
    if can_upscale:
        upscale = translate("Upscale", locale)
        view.add_item(JobButton(Action.UPSCALE, job_id, index, label=upscale, emoji="🔼", row=0))
    view.add_item(JobButton(Action.FAVOURITE, job_id, index, emoji="⭐", row=0))
    view.add_item(JobButton(Action.INFO, job_id, emoji="ℹ", row=0))
    position = indexes.index(index) if index in indexes else 0
    if len(indexes) > 1:
        before, after = indexes[position - 1], indexes[(position + 1) % len(indexes)]
        if before != after:  # with two images both ways lead to the other one
            view.add_item(JobButton(Action.BROWSE, job_id, before, emoji="◀", row=1))
        view.add_item(
            JobButton(
                Action.BROWSE,
                job_id,
                after,
                label=f"{position + 1}/{len(indexes)}",
                emoji="▶",
                row=1,
            )
        )
    if rerollable:  # a plain edit has no generation to run again
        view.add_item(JobButton(Action.REROLL, job_id, emoji="🔄", row=1))
    if owner:
        share = translate("Share", locale)
        view.add_item(JobButton(Action.SHARE, job_id, label=share, emoji="📤", row=1))
    if removable:
        view.add_item(
            JobButton(
                Action.GALLERY_REMOVE,
                job_id,
                label=translate("Remove from gallery", locale),
                emoji="🚫",
                style=discord.ButtonStyle.danger,
                row=1,
            )
        )
    return view


class EditModal(discord.ui.Modal):
    """✂ Edit: crop, turn, tone and filter, each optional; no model runs."""

    FIELDS = (
        ("crop", N_("Crop"), N_("1:1, 16:9, 3:4... or a box: left top width height (%)")),
        ("turn", N_("Rotate or flip"), "90, 180, 270, horizontal, vertical"),
        ("tone", N_("Brightness contrast saturation"), N_("1 is unchanged: 1.2 1 0.8")),
        ("filter", N_("Filter"), "grayscale, sepia, sharpen, blur, autocontrast"),
    )

    def __init__(self, job_id: str, index: int, locale: discord.Locale | None = None) -> None:
        super().__init__(
            title=translate("Edit", locale),
            timeout=900,
            custom_id=f"{PREFIX}:modal-edit:{job_id}",
        )
        self.job_id = job_id
        self.index = index
        self.inputs: list[discord.ui.TextInput[Any]] = []
        for custom_id, label, placeholder in self.FIELDS:
            field: discord.ui.TextInput[Any] = discord.ui.TextInput(
                label=translate_marked(label, locale),
                custom_id=custom_id,
                placeholder=translate_marked(placeholder, locale),
                required=False,
                max_length=60,
            )
            self.inputs.append(field)
            self.add_item(field)

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        crop, turn, tone, look = (field.value for field in self.inputs)
        await _handler(interaction).on_edit_modal(
            interaction, self.job_id, self.index, (crop, turn, tone, look)
        )
