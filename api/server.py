"""Serving the API in the process's own event loop, beside the Discord client.

The socket is bound here, so a port in use is an ``OSError`` the composition root can
explain, and uvicorn's own signal handling stays out of the way (the process has one).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn

GRACEFUL_SHUTDOWN_S = 5  # open event streams are closed after this at shutdown


class ApiServer:
    def __init__(self, app: Any, host: str, port: int) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self.task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The port it listens on (the one the OS chose, when asked for 0)."""
        assert self._socket is not None
        return int(self._socket.getsockname()[1])

    async def start(self) -> None:
        family, kind, proto, _, address = socket.getaddrinfo(
            self._host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(2048)
        except OSError:
            sock.close()
            raise
        self._socket = sock
        config = uvicorn.Config(
            self._app,
            log_config=None,  # our logging is configured already
            lifespan="off",
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        self._server = server
        self.task = asyncio.create_task(server.main_loop(), name="api-server")

    async def stop(self) -> None:
        if self._server is None or self.task is None:
            return
        self._server.should_exit = True
        await self.task
        assert self._socket is not None
        await self._server.shutdown(sockets=[self._socket])
        self._server = None
