"""Talking to a result: a reply that mentions the bot ("@Diffusion make it night", "더 밝게")
starts a new job chained to the result it answers, an img2img of that image with the prompt
refined (core.refine: by rule, or by the LLM endpoint when one is set).

The bot asks for no privileged intent. Discord still hands it a guild message's text when the
message mentions it, and a reply mentions the author of the message it answers unless the
writer turns the ping off; in a DM every message reaches it. A reply to the new result
refines it further, so a conversation (in a thread too) goes on reply by reply.
"""

from __future__ import annotations

import contextlib
import re
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from bot.actions import is_age_restricted, member_role_ids
from bot.host import explain_unexpected
from bot.i18n import message_locale, translate, translate_template
from core.errors import N_, UserError
from core.service import Requester
from core.storage.records import Job, JobStatus

if TYPE_CHECKING:
    from bot.client import DiffusionBot

# "#2 make it night" or "2: make it night" picks the second image of a grid.
_IMAGE_NUMBER = re.compile(r"^\s*#?([1-9])\s*[:.)]?\s+")


def instruction_of(content: str, bot_id: int) -> str:
    """The message without the bot's mentions, trimmed."""
    without = re.sub(rf"<@!?{bot_id}>", " ", content)
    return " ".join(without.split())


def image_choice(instruction: str, images: int) -> tuple[int, str]:
    """(index of the image to change, the instruction without its number)."""
    match = _IMAGE_NUMBER.match(instruction)
    if match is not None and 1 <= int(match.group(1)) <= images:
        return int(match.group(1)) - 1, instruction[match.end() :].strip()
    return 0, instruction


class Conversation(commands.Cog):
    """Replies to results refine them."""

    def __init__(self, bot: DiffusionBot) -> None:
        self.bot = bot

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        me = self.bot.user
        if me is None or message.author.bot or message.webhook_id is not None:
            return
        in_dm = message.guild is None
        if not in_dm and all(user.id != me.id for user in message.mentions):
            return  # not for the bot (and without the intent its text is not here anyway)
        locale = message_locale(message)
        parent = await self._parent(message)
        if parent is None:
            hint = translate(
                "Reply to one of my results and say what to change, for example "
                "“make it night” or “#2 add a red hat”.",
                locale,
            )
            await self._answer(message, hint)
            return
        instruction = instruction_of(message.content, me.id)
        try:
            await self._refine(message, parent, instruction)
        except UserError as error:
            await self._answer(message, translate_template(error, locale))
        except Exception as error:  # a listener's failure would otherwise go unanswered
            await self._answer(message, explain_unexpected(error, locale))

    async def _parent(self, message: discord.Message) -> Job | None:
        """The result a message replies to."""
        reference = message.reference
        if reference is None or reference.message_id is None:
            return None
        return await self.bot.service.db.jobs.by_message(reference.message_id)

    async def _refine(self, message: discord.Message, parent: Job, instruction: str) -> None:
        if parent.private and parent.user_id != message.author.id:
            raise UserError(N_("That result is private; only its owner sees it."))
        if parent.status is not JobStatus.DONE:
            raise UserError(N_("That job has no images yet; reply again once it is done."))
        images = await self.bot.service.job_images(parent.id)
        index, instruction = image_choice(instruction, len(images))
        service = self.bot.service
        refinement = await service.refinement(parent, index, instruction)
        locale = message_locale(message)
        requester = Requester(
            user_id=message.author.id,
            guild_id=None if message.guild is None else message.guild.id,
            channel_id=message.channel.id,
            role_ids=member_role_ids(message.author),
            locale=None if locale is None else locale.value,
            age_restricted=is_age_restricted(message.channel),
        )
        accepted = await service.accept(
            requester,
            refinement.request,
            parent=refinement.parent,
            init_image_key=refinement.init_image_key,
        )
        self.bot.events("queued", accepted.job, accepted.request.model)
        # Without an interaction, the first progress update posts the job's own message,
        # a reply to the result it changes (bot.delivery.MessageTarget).
        self.bot.track(accepted.job, accepted.feed, role_ids=requester.role_ids)

    async def _answer(self, message: discord.Message, text: str) -> None:
        # Without the right to post here there is no other way to tell them.
        with contextlib.suppress(discord.HTTPException):
            await message.reply(text, mention_author=False)


async def setup(bot: DiffusionBot) -> None:
    await bot.add_cog(Conversation(bot))
