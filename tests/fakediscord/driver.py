"""The test driver: what a Discord user does (slash commands, buttons, autocomplete, modals).

Each action builds the INTERACTION_CREATE payload Discord would send, dispatches it on the
gateway, and returns an :class:`~fakediscord.interactions.InteractionHandle` to await the
bot's answer. Options are checked against the synced command definitions the way the
Discord client checks them (required options, choices, min/max), so a test cannot send what
no user could; pass ``require_registered=False`` to skip that.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from .interactions import InteractionHandle
from .models import (
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeRole,
    FakeUser,
    Permissions,
    StoredAttachment,
    StoredMessage,
    iter_components,
)

if TYPE_CHECKING:
    from .server import FakeDiscord

UserLike = FakeUser | FakeMember

OPTION_TYPES = {
    "SUB_COMMAND": 1,
    "SUB_COMMAND_GROUP": 2,
    "STRING": 3,
    "INTEGER": 4,
    "BOOLEAN": 5,
    "USER": 6,
    "CHANNEL": 7,
    "ROLE": 8,
    "MENTIONABLE": 9,
    "NUMBER": 10,
    "ATTACHMENT": 11,
}
CONTEXT_GUILD, CONTEXT_BOT_DM = 0, 1


class CommandRejected(ValueError):
    """The Discord client would not let a user send this (unknown option, out of range...)."""


class DriverMixin:
    """Mixed into :class:`~fakediscord.server.FakeDiscord`."""

    last_interaction: InteractionHandle | None = None

    # -- helpers --------------------------------------------------------------------------
    def _as_fake(self) -> FakeDiscord:
        return self  # type: ignore[return-value]

    def find_command(
        self, name: str, *, guild: FakeGuild | None = None, type: int = 1
    ) -> dict[str, Any] | None:
        """The synced definition of ``name``: guild commands first, then global ones."""
        fake = self._as_fake()
        scopes: list[int | None] = []
        if guild is not None:
            scopes.append(guild.id)
        scopes.append(None)
        for scope in scopes:
            for command in fake.commands.get(scope, []):
                if command["name"] == name and (command.get("type") or 1) == type:
                    return command
        return None

    async def post_message(
        self,
        content: str,
        *,
        user: UserLike | None = None,
        guild: FakeGuild | str | None = None,
        channel: FakeChannel | None = None,
        reply_to: StoredMessage | None = None,
        ping: bool = True,
    ) -> StoredMessage:
        """``user`` (default alice) writes ``content`` in a channel, as a Discord client
        does; the bot gets MESSAGE_CREATE (without the content unless it is mentioned or has
        the message content intent). ``<@id>`` in the content mentions that user;
        ``reply_to`` makes it a reply, which with ``ping`` (Discord's default) also mentions
        the replied message's author."""
        fake = self._as_fake()
        author = self._resolve_user(user)
        g, ch = self._where(guild, channel, author)
        if g is not None and author.id not in g.members:
            raise CommandRejected(f"{author.username} is not a member of {g.name}")
        mentioned = [
            fake.users[int(found)]
            for found in re.findall(r"<@!?(\d+)>", content)
            if int(found) in fake.users
        ]
        msg = StoredMessage(
            id=fake.snowflake(),
            channel_id=ch.id,
            guild_id=ch.guild_id,
            author=author,
            content=content,
            member=None if g is None else g.members.get(author.id),
        )
        if reply_to is not None:
            msg.reply_to(reply_to)
            if ping and reply_to.author not in mentioned:
                mentioned.append(reply_to.author)
        msg.mentions = mentioned
        msg.snapshot("user")
        fake._messages[msg.id] = msg
        fake._channel_messages.setdefault(ch.id, []).append(msg.id)
        ch.last_message_id = msg.id
        await fake._announce(msg, "MESSAGE_CREATE")
        fake._notify()
        return msg

    def _resolve_user(self, user: UserLike | None) -> FakeUser:
        fake = self._as_fake()
        if user is None:
            return fake.alice.user
        return user.user if isinstance(user, FakeMember) else user

    def _base_payload(
        self,
        itype: int,
        user: FakeUser,
        guild: FakeGuild | None,
        channel: FakeChannel,
        locale: str,
    ) -> tuple[int, str, dict[str, Any]]:
        fake = self._as_fake()
        iid = fake.snowflake()
        token = fake._new_token()
        payload: dict[str, Any] = {
            "id": str(iid),
            "application_id": str(fake.application_id),
            "type": itype,
            "token": token,
            "version": 1,
            "locale": locale,
            "entitlements": [],
            "entitlement_sku_ids": [],
            "attachment_size_limit": fake.upload_limit,
            "authorizing_integration_owners": (
                {"0": str(guild.id)} if guild is not None else {"1": str(user.id)}
            ),
            "context": CONTEXT_GUILD if guild is not None else CONTEXT_BOT_DM,
            "channel_id": str(channel.id),
        }
        if guild is not None:
            member = guild.members.get(user.id)
            if member is None:
                raise CommandRejected(f"{user.username} is not a member of {guild.name}")
            perms = guild.permissions_for(user.id)
            member_payload = member.payload()
            member_payload["permissions"] = str(perms)
            payload.update(
                guild_id=str(guild.id),
                guild_locale=guild.locale,
                guild={"id": str(guild.id), "locale": guild.locale, "features": []},
                member=member_payload,
                app_permissions=str(guild.permissions_for(fake.bot_user.id)),
                channel=channel.payload(permissions=perms),
            )
        else:
            payload.update(
                user=user.payload(),
                app_permissions=str(fake._bot_permissions(channel)),
                channel=channel.payload(),
            )
        return iid, token, payload

    def _where(
        self, guild: FakeGuild | str | None, channel: FakeChannel | None, user: FakeUser
    ) -> tuple[FakeGuild | None, FakeChannel]:
        fake = self._as_fake()
        if channel is not None:
            if channel.guild_id is None:
                return None, channel
            return fake.guilds[channel.guild_id], channel
        if guild == "dm":
            return None, fake.dm_channel(user)
        g = guild if isinstance(guild, FakeGuild) else fake.guild
        return g, g.channels[0]

    async def _dispatch(
        self, handle: InteractionHandle, *, wait_connected: bool, timeout: float
    ) -> InteractionHandle:
        fake = self._as_fake()
        guild_id = handle.guild.id if handle.guild is not None else None
        if wait_connected:
            await fake.wait_for(
                lambda: (s := fake.gateway.session_for_guild(guild_id)) is not None and s.connected,
                timeout=timeout,
                description="a connected gateway session to deliver the interaction",
            )
        session = fake.gateway.session_for_guild(guild_id)
        if session is None:
            raise AssertionError(f"no gateway session to deliver {handle!r}\n{fake.describe()}")
        fake._register_interaction(handle)
        self.last_interaction = handle
        handle.created_at = time.monotonic()
        handle.expires_at = handle.created_at + fake.token_lifetime
        await session.dispatch("INTERACTION_CREATE", handle.payload)
        return handle

    # -- options --------------------------------------------------------------------------
    @staticmethod
    def _infer_type(value: Any) -> int:
        if isinstance(value, bool):
            return 5
        if isinstance(value, int):
            return 4
        if isinstance(value, float):
            return 10
        if isinstance(value, FakeMember | FakeUser):
            return 6
        if isinstance(value, FakeChannel):
            return 7
        if isinstance(value, FakeRole):
            return 8
        if isinstance(value, StoredAttachment | bytes | tuple):
            return 11
        return 3

    def _option_value(
        self,
        definition: dict[str, Any] | None,
        name: str,
        value: Any,
        resolved: dict[str, dict[str, Any]],
        guild: FakeGuild | None,
        focused: bool,
    ) -> dict[str, Any]:
        fake = self._as_fake()
        otype = definition["type"] if definition else self._infer_type(value)
        out: dict[str, Any] = {"name": name, "type": otype}
        if focused:
            out["value"] = value if isinstance(value, str) else str(value)
            out["focused"] = True
            return out
        if otype == 3:
            if not isinstance(value, str):
                raise CommandRejected(f"option {name!r} takes a string, got {value!r}")
            lo, hi = (definition or {}).get("min_length"), (definition or {}).get("max_length")
            if lo is not None and len(value) < lo:
                raise CommandRejected(f"option {name!r} needs at least {lo} characters")
            limit = 6000 if hi is None else hi
            if len(value) > limit:
                raise CommandRejected(f"option {name!r} takes at most {limit} characters")
            out["value"] = value
        elif otype in (4, 10):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise CommandRejected(f"option {name!r} takes a number, got {value!r}")
            if otype == 4 and not isinstance(value, int):
                raise CommandRejected(f"option {name!r} takes an integer, got {value!r}")
            lo, hi = (definition or {}).get("min_value"), (definition or {}).get("max_value")
            if lo is not None and value < lo:
                raise CommandRejected(f"option {name!r} must be >= {lo}")
            if hi is not None and value > hi:
                raise CommandRejected(f"option {name!r} must be <= {hi}")
            out["value"] = value
        elif otype == 5:
            if not isinstance(value, bool):
                raise CommandRejected(f"option {name!r} takes a boolean, got {value!r}")
            out["value"] = value
        elif otype in (6, 9) and isinstance(value, FakeMember | FakeUser):
            user = value.user if isinstance(value, FakeMember) else value
            resolved.setdefault("users", {})[str(user.id)] = user.payload()
            member = guild.members.get(user.id) if guild is not None else None
            if member is not None and guild is not None:
                mp = member.payload(with_user=False)
                mp["permissions"] = str(guild.permissions_for(user.id))
                resolved.setdefault("members", {})[str(user.id)] = mp
            out["value"] = str(user.id)
        elif otype == 7 and isinstance(value, FakeChannel):
            perms = guild.permissions_for(self._resolve_user(None).id) if guild else 0
            resolved.setdefault("channels", {})[str(value.id)] = {
                "id": str(value.id),
                "name": value.name,
                "type": value.type,
                "permissions": str(perms),
                "flags": 0,
                **({"guild_id": str(value.guild_id)} if value.guild_id else {}),
            }
            out["value"] = str(value.id)
        elif otype in (8, 9) and isinstance(value, FakeRole):
            resolved.setdefault("roles", {})[str(value.id)] = value.payload()
            out["value"] = str(value.id)
        elif otype == 11:
            if isinstance(value, bytes):
                value = fake.upload("image.png", value)
            elif isinstance(value, tuple):
                value = fake.upload(*value)
            if not isinstance(value, StoredAttachment):
                raise CommandRejected(f"option {name!r} takes an attachment (fake.upload(...))")
            resolved.setdefault("attachments", {})[str(value.id)] = value.payload()
            out["value"] = str(value.id)
        else:
            raise CommandRejected(f"option {name!r} of type {otype} cannot take {value!r}")
        choices = (definition or {}).get("choices")
        if choices and out["value"] not in [c["value"] for c in choices]:
            raise CommandRejected(
                f"option {name!r} must be one of {[c['value'] for c in choices]}, got {value!r}"
            )
        return out

    def _build_options(
        self,
        definitions: list[dict[str, Any]] | None,
        options: dict[str, Any],
        resolved: dict[str, dict[str, Any]],
        guild: FakeGuild | None,
        focused: str | None,
        command: str,
    ) -> list[dict[str, Any]]:
        by_name = {d["name"]: d for d in definitions or []}
        if definitions is not None:
            unknown = [n for n in options if n not in by_name]
            if unknown:
                raise CommandRejected(
                    f"/{command} has no option(s) {unknown}; it has {sorted(by_name)}"
                )
            missing = [
                d["name"]
                for d in definitions
                if d.get("required") and d["name"] not in options and d["name"] != focused
            ]
            if missing and focused is None:
                raise CommandRejected(f"/{command} needs option(s) {missing}")
        out = []
        for name, value in options.items():
            if value is None:
                continue
            out.append(
                self._option_value(by_name.get(name), name, value, resolved, guild, focused == name)
            )
        return out

    @staticmethod
    def _check_allowed(definition: dict[str, Any], user: FakeUser, guild: FakeGuild | None) -> None:
        """Refuse what the Discord client would not offer this user here."""
        name = definition["name"]
        contexts = definition.get("contexts")
        if guild is None:
            if definition.get("guild_id"):
                raise CommandRejected(f"/{name} is a guild command; it is not offered in DMs")
            if contexts is not None and CONTEXT_BOT_DM not in contexts:
                raise CommandRejected(f"/{name} is not offered in DMs (contexts={contexts})")
            if contexts is None and definition.get("dm_permission") is False:
                raise CommandRejected(f"/{name} has dm_permission=false")
            return
        if contexts is not None and CONTEXT_GUILD not in contexts:
            raise CommandRejected(f"/{name} is not offered in guilds (contexts={contexts})")
        required = definition.get("default_member_permissions")
        if required is not None:
            need = int(required)
            have = guild.permissions_for(user.id)
            if have & need != need or (need == 0 and have != Permissions.ALL):
                raise CommandRejected(
                    f"/{name} needs permissions {need:#x} (default_member_permissions) that "
                    f"{user.username} lacks; the Discord client hides it. Pass "
                    "respect_permissions=False to simulate a server's permission override."
                )

    def _command_data(
        self,
        name: str,
        options: dict[str, Any] | None,
        *,
        guild: FakeGuild | None,
        focused: str | None,
        require_registered: bool,
        user: FakeUser,
        respect_permissions: bool = True,
        command_type: int = 1,
    ) -> dict[str, Any]:
        fake = self._as_fake()
        parts = name.strip().lstrip("/").split()
        top = parts[0]
        definition = self.find_command(top, guild=guild, type=command_type)
        if definition is None and require_registered:
            known = sorted({c["name"] for scope in fake.commands.values() for c in scope})
            raise CommandRejected(
                f"/{top} is not registered (synced commands: {known}); was the tree synced? "
                "Pass require_registered=False to send it anyway."
            )
        if definition is not None and respect_permissions:
            self._check_allowed(definition, user, guild)
        resolved: dict[str, dict[str, Any]] = {}
        definitions: list[dict[str, Any]] | None = (
            definition.get("options", []) if definition is not None else None
        )
        chain: list[dict[str, Any]] = []
        for sub in parts[1:]:
            sub_def = None
            if definitions is not None:
                sub_def = next((d for d in definitions if d["name"] == sub), None)
                if sub_def is None or sub_def.get("type") not in (1, 2):
                    raise CommandRejected(f"/{top} has no subcommand {sub!r}")
            chain.append(
                {
                    "name": sub,
                    "type": sub_def["type"] if sub_def else (1 if sub == parts[-1] else 2),
                }
            )
            definitions = sub_def.get("options", []) if sub_def is not None else None
        leaf_options = self._build_options(
            definitions, dict(options or {}), resolved, guild, focused, name
        )
        nested: list[dict[str, Any]] = leaf_options
        for link in reversed(chain):
            nested = [{**link, "options": nested}]
        data: dict[str, Any] = {
            "id": definition["id"] if definition else str(fake.snowflake()),
            "name": top,
            "type": command_type,
        }
        if nested:
            data["options"] = nested
        if resolved:
            data["resolved"] = resolved
        if definition is not None and definition.get("guild_id"):
            data["guild_id"] = definition["guild_id"]
        return data

    # -- actions --------------------------------------------------------------------------
    async def send_slash_command(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        subcommand: str | None = None,
        user: UserLike | None = None,
        guild: FakeGuild | str | None = None,
        channel: FakeChannel | None = None,
        locale: str = "en-US",
        require_registered: bool = True,
        respect_permissions: bool = True,
        wait_connected: bool = True,
        timeout: float = 10.0,
    ) -> InteractionHandle:
        """Run ``/name`` as ``user`` (default alice).

        Subcommands: ``name="quota set"`` or ``subcommand="set"`` (``"role set"`` for a
        subcommand in a group).

        ``options`` maps option names to Python values: str, int, float, bool, a
        FakeMember/FakeUser, FakeChannel, FakeRole, or an attachment (``fake.upload(...)``,
        raw ``bytes``, or ``(filename, bytes)``). ``guild="dm"`` sends it from a DM.
        """
        if subcommand:
            name = f"{name} {subcommand}"
        handle = self._command_interaction(
            2,
            name,
            options,
            focused=None,
            user=user,
            guild=guild,
            channel=channel,
            locale=locale,
            require_registered=require_registered,
            respect_permissions=respect_permissions,
        )
        return await self._dispatch(handle, wait_connected=wait_connected, timeout=timeout)

    async def autocomplete(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        focused: str | None = None,
        user: UserLike | None = None,
        guild: FakeGuild | str | None = None,
        channel: FakeChannel | None = None,
        locale: str = "en-US",
        require_registered: bool = True,
        respect_permissions: bool = True,
        timeout: float | None = None,
    ) -> list[dict[str, Any]]:
        """Ask for choices while the user types ``options[focused]``; returns the choices.

        ``focused`` defaults to the last option given. The handle is ``fake.last_interaction``.
        """
        options = dict(options or {})
        if not options:
            raise ValueError("autocomplete needs at least the focused option's current text")
        handle = self._command_interaction(
            4,
            name,
            options,
            focused=focused or list(options)[-1],
            user=user,
            guild=guild,
            channel=channel,
            locale=locale,
            require_registered=require_registered,
            respect_permissions=respect_permissions,
        )
        await self._dispatch(handle, wait_connected=True, timeout=10.0)
        return await handle.wait_for_choices(timeout)

    def _command_interaction(
        self,
        type_: int,
        name: str,
        options: dict[str, Any] | None,
        *,
        focused: str | None,
        user: UserLike | None,
        guild: FakeGuild | str | None,
        channel: FakeChannel | None,
        locale: str,
        require_registered: bool,
        respect_permissions: bool,
    ) -> InteractionHandle:
        """An APPLICATION_COMMAND (2) or, with ``focused``, an AUTOCOMPLETE (4) interaction."""
        the_user = self._resolve_user(user)
        g, ch = self._where(guild, channel, the_user)
        data = self._command_data(
            name,
            options,
            guild=g,
            focused=focused,
            require_registered=require_registered,
            user=the_user,
            respect_permissions=respect_permissions,
        )
        if focused is not None:
            data.pop("resolved", None)  # autocomplete carries no resolved objects
        iid, token, payload = self._base_payload(type_, the_user, g, ch, locale)
        payload["data"] = data
        return InteractionHandle(
            self._as_fake(),
            id=iid,
            token=token,
            type=type_,
            payload=payload,
            user=the_user,
            guild=g,
            channel=ch,
            name=name if focused is None else f"{name} [{focused}]",
        )

    @staticmethod
    def _emoji_matches(component: dict[str, Any], emoji: str) -> bool:
        em = component.get("emoji") or {}
        name = em.get("name") or ""
        if emoji in (name, f":{name}:"):
            return True
        if em.get("id") and (emoji == str(em["id"]) or emoji.endswith(f":{em['id']}>")):
            return True
        return name.rstrip("\ufe0f") == emoji.rstrip("\ufe0f") and bool(name)

    def find_component(
        self,
        message: StoredMessage,
        *,
        label: str | None = None,
        emoji: str | None = None,
        custom_id: str | None = None,
        type: int | None = None,
    ) -> dict[str, Any]:
        candidates = []
        for comp in iter_components(message.components):
            if type is not None and comp.get("type") != type:
                continue
            if type is None and comp.get("type") not in (2, 3, 5, 6, 7, 8):
                continue
            if label is not None and comp.get("label") != label:
                continue
            if emoji is not None and not self._emoji_matches(comp, emoji):
                continue
            if custom_id is not None and comp.get("custom_id") != custom_id:
                continue
            candidates.append(comp)
        if not candidates:
            raise AssertionError(
                f"no component label={label!r} emoji={emoji!r} custom_id={custom_id!r} on "
                f"{message!r}; it has {message.button_labels}"
            )
        if len(candidates) > 1 and custom_id is None:
            raise AssertionError(
                f"{len(candidates)} components match label={label!r} emoji={emoji!r} on "
                f"{message!r}; pass custom_id= to choose"
            )
        return candidates[0]

    async def send_message_command(
        self,
        name: str,
        message: StoredMessage | int,
        *,
        user: UserLike | None = None,
        locale: str = "en-US",
        timeout: float = 10.0,
    ) -> InteractionHandle:
        """Run the message context-menu command ``name`` (Apps → name) on ``message``, as a
        user right-clicking it would: the message arrives resolved in the interaction."""
        fake = self._as_fake()
        target = self._message_arg(message)
        the_user = self._resolve_user(user)
        channel = fake.channels[target.channel_id]
        guild, channel = self._where(None, channel, the_user)
        data = self._command_data(
            name,
            None,
            guild=guild,
            focused=None,
            require_registered=True,
            user=the_user,
            command_type=3,
        )
        data["target_id"] = str(target.id)
        data["resolved"] = {"messages": {str(target.id): target.payload()}}
        iid, token, payload = self._base_payload(2, the_user, guild, channel, locale)
        payload["data"] = data
        handle = InteractionHandle(
            fake,
            id=iid,
            token=token,
            type=2,
            payload=payload,
            user=the_user,
            guild=guild,
            channel=channel,
            name=f"{name} (message)",
        )
        return await self._dispatch(handle, wait_connected=True, timeout=timeout)

    def _component_payload(
        self, message: StoredMessage, user: FakeUser, locale: str, data: dict[str, Any]
    ) -> tuple[InteractionHandle, dict[str, Any]]:
        fake = self._as_fake()
        if message.deleted:
            raise AssertionError(f"cannot interact with deleted message {message!r}")
        channel = fake.channels[message.channel_id]
        guild = fake.guilds.get(channel.guild_id) if channel.guild_id else None
        iid, token, payload = self._base_payload(3, user, guild, channel, locale)
        payload["data"] = data
        payload["message"] = message.payload()
        name = data.get("custom_id", "")
        handle = InteractionHandle(
            fake,
            id=iid,
            token=token,
            type=3,
            payload=payload,
            user=user,
            guild=guild,
            channel=channel,
            name=name,
            message=message,
        )
        return handle, payload

    def _message_arg(self, message: StoredMessage | int) -> StoredMessage:
        if isinstance(message, StoredMessage):
            return message
        found = self._as_fake().get_message(message)
        if found is None:
            raise AssertionError(f"no message {message} in the fake")
        return found

    async def click_button(
        self,
        message: StoredMessage | int,
        *,
        label: str | None = None,
        emoji: str | None = None,
        custom_id: str | None = None,
        user: UserLike | None = None,
        locale: str = "en-US",
        timeout: float = 10.0,
    ) -> InteractionHandle:
        """Click the button with this label, emoji (``"🔄"``) or custom_id on ``message``."""
        if label is None and emoji is None and custom_id is None:
            raise ValueError("click_button needs label=, emoji= or custom_id=")
        message = self._message_arg(message)
        comp = self.find_component(message, label=label, emoji=emoji, custom_id=custom_id, type=2)
        if comp.get("disabled"):
            raise CommandRejected(f"button {comp.get('label') or comp.get('emoji')} is disabled")
        if comp.get("style") == 5 or not comp.get("custom_id"):
            raise CommandRejected("link buttons open a URL; they send no interaction")
        data: dict[str, Any] = {"custom_id": comp["custom_id"], "component_type": 2}
        if isinstance(comp.get("id"), int):
            data["id"] = comp["id"]
        handle, _ = self._component_payload(message, self._resolve_user(user), locale, data)
        return await self._dispatch(handle, wait_connected=True, timeout=timeout)

    async def select(
        self,
        message: StoredMessage | int,
        values: list[str],
        *,
        custom_id: str | None = None,
        user: UserLike | None = None,
        locale: str = "en-US",
        timeout: float = 10.0,
    ) -> InteractionHandle:
        """Choose ``values`` in the string select menu (``custom_id`` if there are several)."""
        message = self._message_arg(message)
        comp = self.find_component(message, custom_id=custom_id, type=3)
        allowed = [o.get("value") for o in comp.get("options") or []]
        bad = [v for v in values if v not in allowed]
        if bad:
            raise CommandRejected(f"select {comp['custom_id']!r} has no option(s) {bad}")
        data: dict[str, Any] = {
            "custom_id": comp["custom_id"],
            "component_type": 3,
            "values": list(values),
        }
        if isinstance(comp.get("id"), int):
            data["id"] = comp["id"]
        handle, _ = self._component_payload(message, self._resolve_user(user), locale, data)
        return await self._dispatch(handle, wait_connected=True, timeout=timeout)

    async def submit_modal(
        self,
        opened_by: InteractionHandle,
        values: dict[str, str],
        *,
        timeout: float = 10.0,
    ) -> InteractionHandle:
        """Fill in and submit the modal the bot answered ``opened_by`` with."""
        fake = self._as_fake()
        modal = await opened_by.wait_for_modal()
        inputs: dict[str, dict[str, Any]] = {}

        def answer(comp: dict[str, Any]) -> dict[str, Any]:
            cid = comp.get("custom_id", "")
            inputs[cid] = comp
            out: dict[str, Any] = {"type": comp.get("type"), "custom_id": cid}
            if "id" in comp:
                out["id"] = comp["id"]
            if comp.get("type") == 4:
                value = values.get(cid, comp.get("value") or "")
                if comp.get("required", True) and not value:
                    raise CommandRejected(f"text input {cid!r} is required")
                if comp.get("max_length") is not None and len(value) > comp["max_length"]:
                    raise CommandRejected(
                        f"text input {cid!r} takes at most {comp['max_length']} characters"
                    )
                out["value"] = value
            else:
                raw = values.get(cid, [])
                out["values"] = list(raw) if not isinstance(raw, str) else [raw]
            return out

        submitted = []
        for top in modal.get("components") or []:
            if top.get("type") == 1:
                submitted.append(
                    {
                        "type": 1,
                        **({"id": top["id"]} if "id" in top else {}),
                        "components": [answer(c) for c in top.get("components") or []],
                    }
                )
            elif top.get("type") == 18 and isinstance(top.get("component"), dict):
                submitted.append(
                    {
                        "type": 18,
                        **({"id": top["id"]} if "id" in top else {}),
                        "component": answer(top["component"]),
                    }
                )
            elif top.get("type") == 10:
                submitted.append({"type": 10, **({"id": top["id"]} if "id" in top else {})})
        unknown = set(values) - set(inputs)
        if unknown:
            raise CommandRejected(f"the modal has no input(s) {sorted(unknown)}")
        user = opened_by.user
        iid, token, payload = self._base_payload(
            5, user, opened_by.guild, opened_by.channel, opened_by.payload.get("locale", "en-US")
        )
        payload["data"] = {"custom_id": modal.get("custom_id"), "components": submitted}
        if opened_by.message is not None:
            payload["message"] = opened_by.message.payload()
        handle = InteractionHandle(
            fake,
            id=iid,
            token=token,
            type=5,
            payload=payload,
            user=user,
            guild=opened_by.guild,
            channel=opened_by.channel,
            name=str(modal.get("custom_id")),
            message=opened_by.message,
        )
        return await self._dispatch(handle, wait_connected=True, timeout=timeout)
