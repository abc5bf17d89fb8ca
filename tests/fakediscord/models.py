"""The fake's world: users, guilds, roles, channels, members and stored messages.

Every ``*_payload`` method builds the full object Discord would send, so the unmodified
discord.py client can parse it (a missing field in a gateway event can kill the client).
"""

from __future__ import annotations

import itertools
import mimetypes
import struct
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

DISCORD_EPOCH_MS = 1420070400000


class Permissions:
    CREATE_INSTANT_INVITE = 1 << 0
    ADMINISTRATOR = 1 << 3
    MANAGE_CHANNELS = 1 << 4
    MANAGE_GUILD = 1 << 5
    ADD_REACTIONS = 1 << 6
    VIEW_CHANNEL = 1 << 10
    SEND_MESSAGES = 1 << 11
    MANAGE_MESSAGES = 1 << 13
    EMBED_LINKS = 1 << 14
    ATTACH_FILES = 1 << 15
    READ_MESSAGE_HISTORY = 1 << 16
    MENTION_EVERYONE = 1 << 17
    USE_EXTERNAL_EMOJIS = 1 << 18
    CONNECT = 1 << 20
    SPEAK = 1 << 21
    CHANGE_NICKNAME = 1 << 26
    MANAGE_ROLES = 1 << 28
    USE_APPLICATION_COMMANDS = 1 << 31
    CREATE_PUBLIC_THREADS = 1 << 35
    SEND_MESSAGES_IN_THREADS = 1 << 38
    ALL = (1 << 51) - 1

    EVERYONE_DEFAULT = (
        CREATE_INSTANT_INVITE
        | ADD_REACTIONS
        | VIEW_CHANNEL
        | SEND_MESSAGES
        | EMBED_LINKS
        | ATTACH_FILES
        | READ_MESSAGE_HISTORY
        | USE_EXTERNAL_EMOJIS
        | CONNECT
        | SPEAK
        | CHANGE_NICKNAME
        | USE_APPLICATION_COMMANDS
        | CREATE_PUBLIC_THREADS
        | SEND_MESSAGES_IN_THREADS
    )
    #: What the README asks server owners to grant the bot.
    BOT_DEFAULT = (
        VIEW_CHANNEL
        | SEND_MESSAGES
        | EMBED_LINKS
        | ATTACH_FILES
        | READ_MESSAGE_HISTORY
        | ADD_REACTIONS
        | USE_EXTERNAL_EMOJIS
        | SEND_MESSAGES_IN_THREADS
    )


class MessageFlags:
    SUPPRESS_EMBEDS = 1 << 2
    EPHEMERAL = 1 << 6
    LOADING = 1 << 7
    SUPPRESS_NOTIFICATIONS = 1 << 12
    IS_COMPONENTS_V2 = 1 << 15


class SnowflakeFactory:
    """Real-looking snowflakes (their timestamp is now), unique within the process."""

    def __init__(self) -> None:
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._last = 0

    def __call__(self) -> int:
        with self._lock:
            ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
            value = (ms << 22) | (1 << 17) | (next(self._counter) & 0xFFF)
            if value <= self._last:
                value = self._last + 1
            self._last = value
            return value


def iso(dt: datetime | None = None) -> str:
    return (dt or datetime.now(UTC)).isoformat(timespec="microseconds")


@dataclass(eq=False)
class FakeUser:
    id: int
    username: str
    global_name: str | None = None
    bot: bool = False
    locale: str = "en-US"

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "username": self.username,
            "global_name": self.global_name,
            "avatar": None,
            "discriminator": "0",
            "public_flags": 0,
            "flags": 0,
            "banner": None,
            "accent_color": None,
            "avatar_decoration_data": None,
            "collectibles": None,
            "primary_guild": None,
            "clan": None,
        }
        if self.bot:
            data["bot"] = True
        return data

    def pii_payload(self) -> dict[str, Any]:
        data = self.payload()
        data.update(mfa_enabled=True, locale=self.locale, verified=True, email=None)
        data["premium_type"] = 0
        return data


@dataclass(eq=False)
class FakeRole:
    id: int
    name: str
    permissions: int
    position: int = 0
    managed: bool = False
    bot_id: int | None = None
    color: int = 0

    @property
    def mention(self) -> str:
        return f"<@&{self.id}>"

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "name": self.name,
            "permissions": str(self.permissions),
            "position": self.position,
            "color": self.color,
            "colors": {
                "primary_color": self.color,
                "secondary_color": None,
                "tertiary_color": None,
            },
            "hoist": False,
            "managed": self.managed,
            "mentionable": False,
            "icon": None,
            "unicode_emoji": None,
            "flags": 0,
            "description": None,
        }
        if self.bot_id is not None:
            data["tags"] = {"bot_id": str(self.bot_id)}
        return data


@dataclass(eq=False)
class FakeChannel:
    id: int
    name: str
    guild_id: int | None
    type: int = 0  # GUILD_TEXT; 1 = DM
    position: int = 0
    recipients: list[FakeUser] = field(default_factory=list)
    last_message_id: int | None = None
    nsfw: bool = False  # age-restricted, as a server's moderators can mark a channel

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"

    def payload(self, permissions: int | None = None) -> dict[str, Any]:
        if self.guild_id is None:
            return {
                "id": str(self.id),
                "type": self.type,
                "flags": 0,
                "last_message_id": str(self.last_message_id) if self.last_message_id else None,
                "last_pin_timestamp": None,
                "recipients": [u.payload() for u in self.recipients],
            }
        data: dict[str, Any] = {
            "id": str(self.id),
            "type": self.type,
            "guild_id": str(self.guild_id),
            "name": self.name,
            "position": self.position,
            "flags": 0,
            "parent_id": None,
            "topic": None,
            "nsfw": self.nsfw,
            "rate_limit_per_user": 0,
            "last_message_id": str(self.last_message_id) if self.last_message_id else None,
            "last_pin_timestamp": None,
            "permission_overwrites": [],
            "default_auto_archive_duration": 1440,
            "default_thread_rate_limit_per_user": 0,
        }
        if permissions is not None:
            data["permissions"] = str(permissions)
        return data


@dataclass(eq=False)
class FakeMember:
    user: FakeUser
    guild_id: int
    roles: list[FakeRole] = field(default_factory=list)
    nick: str | None = None
    joined_at: datetime = field(default_factory=lambda: datetime(2024, 1, 1, tzinfo=UTC))
    flags: int = 0

    @property
    def id(self) -> int:
        return self.user.id

    def payload(self, *, with_user: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "roles": [str(r.id) for r in self.roles],
            "nick": self.nick,
            "avatar": None,
            "banner": None,
            "joined_at": iso(self.joined_at),
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": self.flags,
            "communication_disabled_until": None,
            "unusual_dm_activity_until": None,
            "avatar_decoration_data": None,
            "collectibles": None,
        }
        if with_user:
            data["user"] = self.user.payload()
        return data


@dataclass(eq=False)
class FakeGuild:
    id: int
    name: str
    owner_id: int
    application_id: int
    roles: list[FakeRole] = field(default_factory=list)
    channels: list[FakeChannel] = field(default_factory=list)
    members: dict[int, FakeMember] = field(default_factory=dict)
    locale: str = "en-US"
    joined_at: datetime = field(default_factory=lambda: datetime(2024, 1, 1, tzinfo=UTC))

    @property
    def everyone(self) -> FakeRole:
        return next(r for r in self.roles if r.id == self.id)

    def role(self, name: str) -> FakeRole:
        for role in self.roles:
            if role.name == name:
                return role
        raise KeyError(f"no role {name!r} in guild {self.name!r}")

    def channel(self, name: str) -> FakeChannel:
        for channel in self.channels:
            if channel.name == name:
                return channel
        raise KeyError(f"no channel {name!r} in guild {self.name!r}")

    def permissions_for(self, user_id: int) -> int:
        """Guild-level permissions (channel overwrites are not modelled)."""
        if user_id == self.owner_id:
            return Permissions.ALL
        member = self.members.get(user_id)
        if member is None:
            return 0
        perms = self.everyone.permissions
        for role in member.roles:
            perms |= role.permissions
        if perms & Permissions.ADMINISTRATOR:
            return Permissions.ALL
        return perms

    def _base_payload(self) -> dict[str, Any]:
        system_channel = self.channels[0].id if self.channels else None
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "icon_hash": None,
            "description": None,
            "home_header": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "features": [],
            "owner_id": str(self.owner_id),
            "application_id": None,
            "region": "deprecated",
            "afk_channel_id": None,
            "afk_timeout": 300,
            "system_channel_id": str(system_channel) if system_channel else None,
            "system_channel_flags": 0,
            "widget_enabled": False,
            "widget_channel_id": None,
            "verification_level": 0,
            "default_message_notifications": 0,
            "mfa_level": 0,
            "explicit_content_filter": 0,
            "max_presences": None,
            "max_members": 500000,
            "max_stage_video_channel_users": 50,
            "max_video_channel_users": 25,
            "vanity_url_code": None,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": self.locale,
            "rules_channel_id": None,
            "safety_alerts_channel_id": None,
            "public_updates_channel_id": None,
            "premium_progress_bar_enabled": False,
            "nsfw": False,
            "nsfw_level": 0,
            "roles": [r.payload() for r in self.roles],
            "emojis": [],
            "stickers": [],
            "incidents_data": None,
            "latest_onboarding_question_id": None,
            "hub_type": None,
            "inventory_settings": None,
            "embedded_activities": [],
        }

    def rest_payload(self, *, with_counts: bool = False) -> dict[str, Any]:
        data = self._base_payload()
        if with_counts:
            data["approximate_member_count"] = len(self.members)
            data["approximate_presence_count"] = 0
        return data

    def gateway_payload(self, bot_user_id: int) -> dict[str, Any]:
        """The GUILD_CREATE payload."""
        data = self._base_payload()
        data.update(
            joined_at=iso(self.joined_at),
            large=False,
            unavailable=False,
            member_count=len(self.members),
            voice_states=[],
            members=[m.payload() for m in self.members.values()],
            channels=[
                {k: v for k, v in c.payload().items() if k != "guild_id"} for c in self.channels
            ],
            threads=[],
            presences=[],
            stage_instances=[],
            guild_scheduled_events=[],
            soundboard_sounds=[],
            lazy=True,
            application_command_counts={},
        )
        return data


def guess_content_type(filename: str) -> str:
    ctype, _ = mimetypes.guess_type(filename)
    return ctype or "application/octet-stream"


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height of a PNG, GIF or JPEG, from its header; ``None`` if not an image."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return int(width), int(height)
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            length = struct.unpack(">H", data[i + 2 : i + 4])[0]
            if marker in (0xC0, 0xC1, 0xC2):
                height, width = struct.unpack(">HH", data[i + 5 : i + 9])
                return int(width), int(height)
            i += 2 + length
    return None


@dataclass(eq=False)
class StoredAttachment:
    """A file the client uploaded (or one a test offers as a slash-command option)."""

    id: int
    filename: str
    data: bytes
    content_type: str
    url: str
    description: str | None = None
    ephemeral: bool = False

    @property
    def size(self) -> int:
        return len(self.data)

    def is_png(self) -> bool:
        return self.data[:8] == b"\x89PNG\r\n\x1a\n"

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": self.url,
            "proxy_url": self.url,
            "content_type": self.content_type,
            "flags": 0,
        }
        if self.description is not None:
            data["description"] = self.description
        dims = image_size(self.data)
        if dims is not None:
            data["width"], data["height"] = dims
            data["placeholder"] = "AAAAAA=="
            data["placeholder_version"] = 1
        if self.ephemeral:
            data["ephemeral"] = True
        return data


@dataclass
class MessageVersion:
    """The visible state of a message after its creation or after one edit."""

    at: float  # time.monotonic()
    wall: datetime
    route: str
    content: str
    embeds: list[dict[str, Any]]
    components: list[dict[str, Any]]
    attachments: list[StoredAttachment]
    flags: int

    @property
    def filenames(self) -> list[str]:
        return [a.filename for a in self.attachments]


def iter_components(components: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every component, depth first (rows, containers, sections, labels, accessories)."""
    out: list[dict[str, Any]] = []
    for comp in components or []:
        out.append(comp)
        out.extend(iter_components(comp.get("components") or []))
        if isinstance(comp.get("accessory"), dict):
            out.extend(iter_components([comp["accessory"]]))
        if isinstance(comp.get("component"), dict):
            out.extend(iter_components([comp["component"]]))
    return out


@dataclass(eq=False)
class StoredMessage:
    id: int
    channel_id: int
    guild_id: int | None
    author: FakeUser
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[StoredAttachment] = field(default_factory=list)
    flags: int = 0
    type: int = 0
    tts: bool = False
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    edited_at: datetime | None = None
    webhook_id: int | None = None
    application_id: int | None = None
    interaction_metadata: dict[str, Any] | None = None
    interaction_id: int | None = None
    message_reference: dict[str, Any] | None = None
    referenced_message: StoredMessage | None = None
    reactions: dict[str, set[int]] = field(default_factory=dict)
    deleted: bool = False
    deleted_at: float | None = None
    versions: list[MessageVersion] = field(default_factory=list)
    member: FakeMember | None = None
    mentions: list[FakeUser] = field(default_factory=list)

    # -- convenience for tests ---------------------------------------------------------
    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & MessageFlags.EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & MessageFlags.LOADING)

    @property
    def edits(self) -> list[MessageVersion]:
        """Every edit in order (``versions`` minus the creation)."""
        return self.versions[1:]

    @property
    def edit_times(self) -> list[float]:
        return [v.at for v in self.edits]

    def min_edit_interval(self) -> float | None:
        """The shortest gap between two consecutive edits, in seconds."""
        times = self.edit_times
        if len(times) < 2:
            return None
        return min(b - a for a, b in itertools.pairwise(times))

    @property
    def all_components(self) -> list[dict[str, Any]]:
        return iter_components(self.components)

    @property
    def buttons(self) -> list[dict[str, Any]]:
        return [c for c in self.all_components if c.get("type") == 2]

    @property
    def button_labels(self) -> list[str]:
        return [b.get("label") or (b.get("emoji") or {}).get("name") or "" for b in self.buttons]

    def attachment(self, filename: str | None = None) -> StoredAttachment:
        for att in self.attachments:
            if filename is None or att.filename == filename:
                return att
        raise KeyError(
            f"message {self.id} has no attachment {filename!r}; it has "
            f"{[a.filename for a in self.attachments]}"
        )

    def text(self) -> str:
        """Content plus embed titles, descriptions, fields and footers (for ``in`` checks)."""
        parts = [self.content]
        for embed in self.embeds:
            parts.append(embed.get("title") or "")
            parts.append(embed.get("description") or "")
            for fld in embed.get("fields") or []:
                parts.append(f"{fld.get('name', '')}\n{fld.get('value', '')}")
            parts.append((embed.get("footer") or {}).get("text") or "")
            parts.append((embed.get("author") or {}).get("name") or "")
        for comp in self.all_components:
            if comp.get("type") == 10:
                parts.append(comp.get("content") or "")
        return "\n".join(p for p in parts if p)

    def snapshot(self, route: str) -> None:
        self.versions.append(
            MessageVersion(
                at=time.monotonic(),
                wall=datetime.now(UTC),
                route=route,
                content=self.content,
                embeds=[dict(e) for e in self.embeds],
                components=list(self.components),
                attachments=list(self.attachments),
                flags=self.flags,
            )
        )

    def __repr__(self) -> str:
        return (
            f"<StoredMessage id={self.id} channel={self.channel_id} content={self.content[:60]!r}"
            f" attachments={[a.filename for a in self.attachments]} buttons={self.button_labels}"
            f" flags={self.flags} edits={len(self.edits)} deleted={self.deleted}>"
        )

    # -- wire format ---------------------------------------------------------------------
    def payload(self, *, include_guild: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "type": self.type,
            "channel_id": str(self.channel_id),
            "author": self.author.payload(),
            "content": self.content,
            "timestamp": iso(self.created_at),
            "edited_timestamp": iso(self.edited_at) if self.edited_at else None,
            "tts": self.tts,
            "mention_everyone": False,
            "mentions": [user.payload() for user in self.mentions],
            "mention_roles": [],
            "attachments": [a.payload() for a in self.attachments],
            "embeds": [_embed_response(e, self.attachments) for e in self.embeds],
            "pinned": False,
            "flags": self.flags,
            "components": self.components,
        }
        if self.reactions:
            data["reactions"] = [
                {
                    "emoji": _reaction_emoji(key),
                    "count": len(users),
                    "count_details": {"burst": 0, "normal": len(users)},
                    "me": self.author.id in users,
                    "me_burst": False,
                    "burst_me": False,
                    "burst_colors": [],
                    "burst_count": 0,
                }
                for key, users in self.reactions.items()
                if users
            ]
        if self.webhook_id is not None:
            data["webhook_id"] = str(self.webhook_id)
        if self.application_id is not None:
            data["application_id"] = str(self.application_id)
        if self.interaction_metadata is not None:
            data["interaction_metadata"] = self.interaction_metadata
            user = self.interaction_metadata.get("user")
            if self.interaction_metadata.get("type") == 2 and user is not None:
                data["interaction"] = {
                    "id": self.interaction_metadata["id"],
                    "type": 2,
                    "name": self.interaction_metadata.get("name", ""),
                    "user": user,
                }
        if self.message_reference is not None:
            data["message_reference"] = self.message_reference
            if self.referenced_message is not None and not self.referenced_message.deleted:
                data["referenced_message"] = self.referenced_message.payload()
        if include_guild and self.guild_id is not None:
            data["guild_id"] = str(self.guild_id)
            if self.member is not None:
                data["member"] = self.member.payload(with_user=False)
        return data

    def reply_to(self, referenced: StoredMessage) -> None:
        self.message_reference = {
            "type": 0,
            "channel_id": str(referenced.channel_id),
            "message_id": str(referenced.id),
            **({"guild_id": str(referenced.guild_id)} if referenced.guild_id else {}),
        }
        self.referenced_message = referenced


def _reaction_emoji(key: str) -> dict[str, Any]:
    if ":" in key:
        name, _, emoji_id = key.partition(":")
        return {"id": emoji_id, "name": name}
    return {"id": None, "name": key}


def _embed_response(embed: dict[str, Any], attachments: list[StoredAttachment]) -> dict[str, Any]:
    """What Discord answers for an embed: ``type: rich``, attachment:// urls resolved."""
    out = {k: v for k, v in embed.items() if v is not None}
    out.setdefault("type", "rich")
    if "color" in out and out["color"] is None:
        del out["color"]
    for key in ("image", "thumbnail"):
        media = out.get(key)
        if isinstance(media, dict) and isinstance(media.get("url"), str):
            media = dict(media)
            url = media["url"]
            if url.startswith("attachment://"):
                name = url.removeprefix("attachment://")
                match = next((a for a in attachments if a.filename == name), None)
                if match is not None:
                    media["url"] = match.url
                    dims = image_size(match.data)
                    if dims:
                        media["width"], media["height"] = dims
                    media["content_type"] = match.content_type
            media.setdefault("proxy_url", media["url"])
            out[key] = media
    if "footer" in out and isinstance(out["footer"], dict):
        out["footer"] = {k: v for k, v in out["footer"].items() if v is not None}
    if "author" in out and isinstance(out["author"], dict):
        out["author"] = {k: v for k, v in out["author"].items() if v is not None}
    return out
