"""What a test holds after it sends an interaction: the acknowledgement and the messages."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .models import FakeChannel, FakeGuild, FakeUser, StoredAttachment, StoredMessage

if TYPE_CHECKING:
    from .server import FakeDiscord

CALLBACK_NAMES = {
    1: "PONG",
    4: "CHANNEL_MESSAGE_WITH_SOURCE",
    5: "DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE",
    6: "DEFERRED_UPDATE_MESSAGE",
    7: "UPDATE_MESSAGE",
    8: "APPLICATION_COMMAND_AUTOCOMPLETE_RESULT",
    9: "MODAL",
    10: "PREMIUM_REQUIRED",
    12: "LAUNCH_ACTIVITY",
}
INTERACTION_NAMES = {
    2: "APPLICATION_COMMAND",
    3: "MESSAGE_COMPONENT",
    4: "AUTOCOMPLETE",
    5: "MODAL_SUBMIT",
}


class FakeDiscordTimeout(AssertionError):
    """Raised when something a test waits for does not happen in time."""


@dataclass
class CallbackRecord:
    """One interaction callback the client sent (its acknowledgement)."""

    type: int
    data: dict[str, Any] | None
    at: float
    latency: float
    files: list[StoredAttachment] = field(default_factory=list)

    @property
    def type_name(self) -> str:
        return CALLBACK_NAMES.get(self.type, str(self.type))

    @property
    def ephemeral(self) -> bool:
        return bool(int((self.data or {}).get("flags") or 0) & 64)

    @property
    def deferred(self) -> bool:
        return self.type in (5, 6)


class InteractionHandle:
    """An interaction the driver dispatched; await its response and messages."""

    def __init__(
        self,
        fake: FakeDiscord,
        *,
        id: int,
        token: str,
        type: int,
        payload: dict[str, Any],
        user: FakeUser,
        guild: FakeGuild | None,
        channel: FakeChannel,
        name: str,
        message: StoredMessage | None = None,
    ) -> None:
        self.fake = fake
        self.id = id
        self.token = token
        self.type = type
        self.payload = payload
        self.user = user
        self.guild = guild
        self.channel = channel
        self.name = name
        self.message = message
        self.created_at = time.monotonic()
        self.expires_at = self.created_at + fake.token_lifetime
        self.callbacks: list[CallbackRecord] = []
        # Set by the acknowledgement: a new message (4, 5) or the component's message (6, 7).
        self.original_message_id: int | None = None
        self.original_created = False
        self.followup_ids: list[int] = []
        self.choices: list[dict[str, Any]] | None = None
        self.modal: dict[str, Any] | None = None
        self.rejected_callbacks: list[str] = []

    def __repr__(self) -> str:
        kind = INTERACTION_NAMES.get(self.type, str(self.type))
        return f"<InteractionHandle {kind} {self.name!r} id={self.id} acks={len(self.callbacks)}>"

    # -- state ------------------------------------------------------------------------
    @property
    def acked(self) -> bool:
        return bool(self.callbacks)

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.expires_at

    def expire(self) -> None:
        """Make the token expire now (as if 15 minutes had passed)."""
        self.expires_at = time.monotonic() - 0.001

    @property
    def callback(self) -> CallbackRecord | None:
        return self.callbacks[0] if self.callbacks else None

    @property
    def ack_latency(self) -> float | None:
        return self.callbacks[0].latency if self.callbacks else None

    @property
    def original(self) -> StoredMessage | None:
        if self.original_message_id is None:
            return None
        return self.fake.get_message(self.original_message_id)

    @property
    def followups(self) -> list[StoredMessage]:
        out = []
        for mid in self.followup_ids:
            msg = self.fake.get_message(mid)
            if msg is not None:
                out.append(msg)
        return out

    @property
    def messages(self) -> list[StoredMessage]:
        """The original response (if this interaction created one) and the followups."""
        out = []
        if self.original_created and self.original is not None:
            out.append(self.original)
        return out + [m for m in self.followups if m.id != self.original_message_id]

    # -- waiting ----------------------------------------------------------------------
    async def response(self, timeout: float | None = None) -> CallbackRecord:
        """The acknowledgement; fails if none arrives within ``timeout`` (default: 3 s)."""
        limit = self.fake.ack_deadline if timeout is None else timeout
        kind = INTERACTION_NAMES.get(self.type, str(self.type))
        await self.fake.wait_for(
            lambda: self.callbacks,
            timeout=limit,
            description=(
                f"the acknowledgement of {kind} {self.name!r} (Discord shows 'The application "
                f"did not respond' after {self.fake.ack_deadline:g} s)"
            ),
        )
        return self.callbacks[0]

    async def wait_for_original(
        self,
        predicate: Callable[[StoredMessage], Any] | None = None,
        timeout: float = 10.0,
    ) -> StoredMessage:
        """The original response once ``predicate`` holds (default: it exists, not loading)."""

        def check() -> StoredMessage | None:
            msg = self.original
            if msg is None:
                return None
            if predicate is None:
                return msg if not msg.loading else None
            return msg if predicate(msg) else None

        result = await self.fake.wait_for(
            check,
            timeout=timeout,
            description=lambda: (
                f"the original response of {self.name!r} to satisfy the "
                f"predicate (at the timeout: {self.original!r})\n{self.history()}"
            ),
        )
        return result

    def history(self) -> str:
        """Every request made with this interaction's token, for a failure message."""
        mine = [r for r in self.fake.requests if self.token in r.path]
        lines = [f"  requests with the token of {self.name!r} ({len(mine)}):"]
        lines.extend(f"    {r!r} at {r.at:.2f}" for r in mine)
        return "\n".join(lines)

    async def wait_for_followup(
        self,
        predicate: Callable[[StoredMessage], Any] | None = None,
        timeout: float = 10.0,
    ) -> StoredMessage:
        """The first followup for which ``predicate`` holds (default: any followup)."""

        def check() -> StoredMessage | None:
            for msg in self.followups:
                if predicate is None or predicate(msg):
                    return msg
            return None

        return await self.fake.wait_for(
            check,
            timeout=timeout,
            description=f"a followup of {self.name!r} (now: {self.followups!r})",
        )

    async def wait_for_message(
        self,
        predicate: Callable[[StoredMessage], Any] | None = None,
        timeout: float = 10.0,
    ) -> StoredMessage:
        """The original or a followup message, whichever satisfies ``predicate`` first."""

        def check() -> StoredMessage | None:
            candidates = ([self.original] if self.original is not None else []) + self.followups
            for msg in candidates:
                if msg is None:
                    continue
                if predicate is None:
                    if not msg.loading:
                        return msg
                elif predicate(msg):
                    return msg
            return None

        return await self.fake.wait_for(
            check, timeout=timeout, description=f"a message answering {self.name!r}"
        )

    async def wait_for_choices(self, timeout: float | None = None) -> list[dict[str, Any]]:
        await self.response(timeout)
        if self.choices is None:
            raise AssertionError(
                f"autocomplete {self.name!r} was answered with {self.callbacks[0].type_name}, "
                "not APPLICATION_COMMAND_AUTOCOMPLETE_RESULT"
            )
        return self.choices

    async def wait_for_modal(self, timeout: float | None = None) -> dict[str, Any]:
        await self.response(timeout)
        if self.modal is None:
            raise AssertionError(
                f"{self.name!r} was answered with {self.callbacks[0].type_name}, not MODAL"
            )
        return self.modal
