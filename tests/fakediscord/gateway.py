"""The fake gateway: HELLO, IDENTIFY/READY, heartbeats, RESUME with replay, dispatch."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

if TYPE_CHECKING:
    from .server import FakeDiscord

log = logging.getLogger("fakediscord.gateway")


class Op:
    DISPATCH = 0
    HEARTBEAT = 1
    IDENTIFY = 2
    PRESENCE_UPDATE = 3
    VOICE_STATE_UPDATE = 4
    RESUME = 6
    RECONNECT = 7
    REQUEST_GUILD_MEMBERS = 8
    INVALID_SESSION = 9
    HELLO = 10
    HEARTBEAT_ACK = 11


class Intents:
    GUILDS = 1 << 0
    GUILD_MEMBERS = 1 << 1
    GUILD_PRESENCES = 1 << 8
    GUILD_MESSAGES = 1 << 9
    DIRECT_MESSAGES = 1 << 12
    MESSAGE_CONTENT = 1 << 15
    PRIVILEGED = GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT


class _Encoder:
    name = "none"

    def encode(self, text: str) -> str | bytes:
        return text


class _ZlibStream(_Encoder):
    name = "zlib-stream"

    def __init__(self) -> None:
        self._c = zlib.compressobj()

    def encode(self, text: str) -> bytes:
        return self._c.compress(text.encode()) + self._c.flush(zlib.Z_SYNC_FLUSH)


def _zstd_encoder() -> Callable[[], _Encoder] | None:
    try:
        import zstandard  # type: ignore[import-not-found]

        class _ZstdStandard(_Encoder):
            name = "zstd-stream"

            def __init__(self) -> None:
                self._c = zstandard.ZstdCompressor().compressobj()

            def encode(self, text: str) -> bytes:
                return self._c.compress(text.encode()) + self._c.flush(
                    zstandard.COMPRESSOBJ_FLUSH_BLOCK
                )

        return _ZstdStandard
    except ImportError:
        pass
    try:
        from compression import zstd  # type: ignore[import-not-found]

        class _ZstdStdlib(_Encoder):
            name = "zstd-stream"

            def __init__(self) -> None:
                self._c = zstd.ZstdCompressor()

            def encode(self, text: str) -> bytes:
                return self._c.compress(text.encode(), mode=zstd.ZstdCompressor.FLUSH_BLOCK)

        return _ZstdStdlib
    except ImportError:
        return None


def make_encoder(compress: str | None) -> _Encoder | None:
    """An encoder for the ``compress`` query parameter, or ``None`` if unsupported."""
    if not compress:
        return _Encoder()
    if compress == "zlib-stream":
        return _ZlibStream()
    if compress == "zstd-stream":
        factory = _zstd_encoder()
        return factory() if factory is not None else None
    return None


@dataclass(eq=False)
class GatewayConnection:
    ws: web.WebSocketResponse
    encoder: _Encoder
    transport: asyncio.BaseTransport | None
    path: str
    opened_at: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed: bool = False
    heartbeats: int = 0

    async def send(self, payload: dict[str, Any]) -> None:
        async with self.lock:
            if self.closed or self.ws.closed:
                raise ConnectionResetError("gateway connection closed")
            data = self.encoder.encode(json.dumps(payload, separators=(",", ":")))
            if isinstance(data, bytes):
                await self.ws.send_bytes(data)
            else:
                await self.ws.send_str(data)


@dataclass(eq=False)
class GatewaySession:
    """One IDENTIFYed session; it outlives its connections so it can be RESUMEd."""

    session_id: str
    identify: dict[str, Any]
    intents: int
    shard: tuple[int, int] | None
    seq: int = 0
    events: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    conn: GatewayConnection | None = None
    invalidated: bool = False
    resume_count: int = 0
    connection_count: int = 1
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    ready_at: float = field(default_factory=time.monotonic)
    presence: dict[str, Any] | None = None

    @property
    def connected(self) -> bool:
        return self.conn is not None and not self.conn.closed

    @property
    def resumable(self) -> bool:
        return not self.invalidated

    def handles_guild(self, guild_id: int | None) -> bool:
        if self.shard is None:
            return True
        shard_id, count = self.shard
        if guild_id is None:
            return shard_id == 0
        return (guild_id >> 22) % count == shard_id

    def event_names(self) -> list[str]:
        return [t for _, t, _ in self.events]

    async def dispatch(self, event: str, data: dict[str, Any]) -> int:
        async with self.lock:
            self.seq += 1
            seq = self.seq
            self.events.append((seq, event, data))
            conn = self.conn
            if conn is not None and not conn.closed:
                try:
                    await conn.send({"op": Op.DISPATCH, "t": event, "s": seq, "d": data})
                except (ConnectionResetError, RuntimeError) as exc:
                    log.debug("dispatch of %s buffered for resume: %s", event, exc)
            return seq


class GatewayServer:
    """Handles ``ws://.../gateway`` connections for a :class:`FakeDiscord`."""

    def __init__(self, fake: FakeDiscord) -> None:
        self.fake = fake
        self.sessions: list[GatewaySession] = []
        self.connections: list[GatewayConnection] = []
        self.identify_payloads: list[dict[str, Any]] = []
        self.close_codes_sent: list[int] = []

    # -- public helpers ----------------------------------------------------------------
    @property
    def active_session(self) -> GatewaySession | None:
        for session in reversed(self.sessions):
            if not session.invalidated:
                return session
        return None

    def session_for_guild(self, guild_id: int | None) -> GatewaySession | None:
        for session in reversed(self.sessions):
            if not session.invalidated and session.handles_guild(guild_id):
                return session
        return None

    async def broadcast(
        self,
        event: str,
        data: dict[str, Any],
        *,
        intent: int | None = None,
        guild_id: int | None = None,
    ) -> None:
        """Dispatch to the live session(s) that handle ``guild_id`` and asked for ``intent``."""
        session = self.session_for_guild(guild_id)
        if session is None:
            return
        if intent is not None and not session.intents & intent:
            return
        await session.dispatch(event, data)

    async def disconnect(
        self,
        code: int | None = 4000,
        *,
        session: GatewaySession | None = None,
        invalidate: bool = False,
    ) -> None:
        """Close the session's socket with ``code``, or drop the TCP connection if ``None``."""
        session = session or self.active_session
        if session is None or session.conn is None:
            raise RuntimeError("no connected gateway session to disconnect")
        conn = session.conn
        session.conn = None
        conn.closed = True
        if invalidate:
            session.invalidated = True
        if code is None:
            if conn.transport is not None:
                conn.transport.abort()
            return
        self.close_codes_sent.append(code)
        await conn.ws.close(code=code, message=b"fakediscord: disconnect requested by test")

    async def request_reconnect(self, session: GatewaySession | None = None) -> None:
        """Send op 7 RECONNECT (Discord asks the client to reconnect and resume)."""
        session = session or self.active_session
        if session is None or session.conn is None:
            raise RuntimeError("no connected gateway session")
        await session.conn.send({"op": Op.RECONNECT, "d": None, "s": None, "t": None})

    async def close_all(self) -> None:
        for conn in list(self.connections):
            if not conn.closed:
                conn.closed = True
                try:
                    await asyncio.wait_for(conn.ws.close(code=1001, message=b"server stopping"), 1)
                except (TimeoutError, RuntimeError, ConnectionError):
                    if conn.transport is not None:
                        conn.transport.abort()

    # -- the websocket handler -----------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        fake = self.fake
        ws = web.WebSocketResponse(autoping=True, max_msg_size=0, heartbeat=None)
        transport = request.transport
        await ws.prepare(request)
        query = request.query
        version = query.get("v")
        encoding = query.get("encoding", "json")
        encoder = make_encoder(query.get("compress"))
        if version != "10":
            fake._problem("gateway", f"client connected with v={version!r}; Discord needs v=10")
            await ws.close(code=4012, message=b"Invalid API version")
            return ws
        if encoding != "json":
            fake._problem("gateway", f"encoding={encoding!r} is not supported by the fake")
            await ws.close(code=4002, message=b"Decode error")
            return ws
        if encoder is None:
            fake._problem(
                "gateway", f"compress={query.get('compress')!r} is not available in the fake"
            )
            await ws.close(code=4002, message=b"Decode error")
            return ws
        conn = GatewayConnection(ws=ws, encoder=encoder, transport=transport, path=request.path)
        self.connections.append(conn)
        session: GatewaySession | None = None
        client_close_code: int | None = None
        try:
            await conn.send(
                {
                    "op": Op.HELLO,
                    "d": {
                        "heartbeat_interval": int(fake.heartbeat_interval * 1000),
                        "_trace": ['["fakediscord-gateway",{"micros":0}]'],
                    },
                    "s": None,
                    "t": None,
                }
            )
            while True:
                msg = await ws.receive()
                if msg.type == WSMsgType.TEXT:
                    raw = msg.data
                elif msg.type == WSMsgType.BINARY:
                    raw = msg.data.decode()
                else:
                    if msg.type == WSMsgType.CLOSE:
                        client_close_code = msg.data
                    break
                try:
                    payload = json.loads(raw)
                    op = payload["op"]
                except (ValueError, KeyError, TypeError):
                    fake._problem("gateway", f"undecodable gateway payload: {raw[:200]!r}")
                    await self._close(conn, 4002, "Decode error")
                    break
                session = await self._on_payload(conn, session, op, payload.get("d"))
                if conn.closed:
                    break
        except (ConnectionResetError, RuntimeError) as exc:
            log.debug("gateway connection ended: %s", exc)
        finally:
            closed_by_client = not conn.closed
            conn.closed = True
            if session is not None and session.conn is conn:
                session.conn = None
                # A client closing with 1000/1001 ends its session (Discord invalidates it).
                if closed_by_client and client_close_code in (1000, 1001):
                    session.invalidated = True
            fake._notify()
        return ws

    async def _close(self, conn: GatewayConnection, code: int, reason: str) -> None:
        conn.closed = True
        self.close_codes_sent.append(code)
        await conn.ws.close(code=code, message=reason.encode())

    async def _on_payload(
        self, conn: GatewayConnection, session: GatewaySession | None, op: int, data: Any
    ) -> GatewaySession | None:
        fake = self.fake
        if op == Op.HEARTBEAT:
            conn.heartbeats += 1
            await conn.send({"op": Op.HEARTBEAT_ACK, "d": None, "s": None, "t": None})
            return session
        if op == Op.IDENTIFY:
            if session is not None:
                await self._close(conn, 4005, "Already authenticated")
                return session
            return await self._identify(conn, data or {})
        if op == Op.RESUME:
            if session is not None:
                await self._close(conn, 4005, "Already authenticated")
                return session
            return await self._resume(conn, data or {})
        if session is None:
            await self._close(conn, 4003, "Not authenticated")
            return None
        if op == Op.PRESENCE_UPDATE:
            session.presence = data
            return session
        if op == Op.REQUEST_GUILD_MEMBERS:
            await self._members_chunk(session, data or {})
            return session
        if op == Op.VOICE_STATE_UPDATE:
            return session
        fake._problem("gateway", f"unknown gateway opcode {op}")
        await self._close(conn, 4001, "Unknown opcode")
        return session

    async def _identify(
        self, conn: GatewayConnection, data: dict[str, Any]
    ) -> GatewaySession | None:
        fake = self.fake
        self.identify_payloads.append(data)
        if data.get("token") != fake.token:
            await self._close(conn, 4004, "Authentication failed.")
            return None
        intents = data.get("intents")
        if not isinstance(intents, int):
            fake._problem("gateway", "IDENTIFY without intents (required on v10)")
            await self._close(conn, 4013, "Invalid intent(s).")
            return None
        disallowed = intents & Intents.PRIVILEGED & ~fake.allowed_privileged_intents
        if disallowed:
            fake._problem(
                "gateway",
                f"IDENTIFY asked for privileged intents {disallowed:#x} that the application is "
                "not allowed (set fake.allowed_privileged_intents to allow them)",
            )
            await self._close(conn, 4014, "Disallowed intent(s).")
            return None
        shard = data.get("shard")
        session = GatewaySession(
            session_id=secrets.token_hex(16),
            identify=data,
            intents=intents,
            shard=(int(shard[0]), int(shard[1])) if shard else None,
            conn=conn,
        )
        self.sessions.append(session)
        guilds = [g for g in fake.guilds.values() if session.handles_guild(g.id)]
        ready: dict[str, Any] = {
            "v": 10,
            "user": fake.bot_user.pii_payload(),
            "user_settings": {},
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.session_id,
            "session_type": "normal",
            "resume_gateway_url": fake.resume_gateway_url,
            "application": {"id": str(fake.application_id), "flags": fake.application_flags},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": ["us-east"],
            "auth": {},
            "_trace": ['["fakediscord",{"micros":0}]'],
        }
        if session.shard is not None:
            ready["shard"] = list(session.shard)
        await session.dispatch("READY", ready)
        for guild in guilds:
            await session.dispatch("GUILD_CREATE", guild.gateway_payload(fake.bot_user.id))
        fake._notify()
        return session

    async def _resume(self, conn: GatewayConnection, data: dict[str, Any]) -> GatewaySession | None:
        fake = self.fake
        session = next((s for s in self.sessions if s.session_id == data.get("session_id")), None)
        if data.get("token") != fake.token:
            await self._close(conn, 4004, "Authentication failed.")
            return None
        if session is None or session.invalidated:
            await conn.send({"op": Op.INVALID_SESSION, "d": False, "s": None, "t": None})
            return None
        if conn.path != fake.resume_gateway_path:
            fake._problem(
                "gateway",
                f"RESUME sent to {conn.path}, not to READY's resume_gateway_url "
                f"({fake.resume_gateway_path})",
            )
        last_seq = data.get("seq") or 0
        async with session.lock:
            old = session.conn
            if old is not None and old is not conn:
                old.closed = True
            session.conn = conn
            session.connection_count += 1
            for seq, event, payload in session.events:
                if seq > last_seq:
                    await conn.send({"op": Op.DISPATCH, "t": event, "s": seq, "d": payload})
        session.resume_count += 1
        await session.dispatch("RESUMED", {"_trace": ['["fakediscord",{"micros":0}]']})
        fake._notify()
        return session

    async def _members_chunk(self, session: GatewaySession, data: dict[str, Any]) -> None:
        fake = self.fake
        guild_id = int(data.get("guild_id", 0) or 0)
        guild = fake.guilds.get(guild_id)
        if guild is None:
            return
        members = list(guild.members.values())
        user_ids = data.get("user_ids")
        if user_ids:
            wanted = {int(u) for u in (user_ids if isinstance(user_ids, list) else [user_ids])}
            members = [m for m in members if m.id in wanted]
        query = data.get("query")
        if query:
            members = [m for m in members if m.user.username.lower().startswith(query.lower())]
        chunk: dict[str, Any] = {
            "guild_id": str(guild_id),
            "members": [m.payload() for m in members],
            "chunk_index": 0,
            "chunk_count": 1,
        }
        if data.get("nonce") is not None:
            chunk["nonce"] = data["nonce"]
        if data.get("presences"):
            chunk["presences"] = []
        await session.dispatch("GUILD_MEMBERS_CHUNK", chunk)
