"""Run the app on a socket: bound before uvicorn loads, so a busy port is a one-line error."""

from __future__ import annotations

import socket

from edgecls.errors import UserError


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (`port` 0: a free one, readable from getsockname())."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UserError(f"`host` {host}: cannot resolve ({exc.strerror})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise UserError(
            f"cannot listen on {host}:{port} ({exc.strerror}); is another server using it? "
            "choose another `port` (0 picks a free one)"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run_server(app, sock: socket.socket, access_log: bool = True, limit_concurrency: int = 1024) -> None:
    """Serve `app` on `sock` with uvicorn until interrupted."""
    import uvicorn

    config = uvicorn.Config(
        app,
        log_level="info",
        access_log=access_log,
        limit_concurrency=limit_concurrency,
        timeout_keep_alive=15,
        server_header=False,
    )
    uvicorn.Server(config).run(sockets=[sock])
