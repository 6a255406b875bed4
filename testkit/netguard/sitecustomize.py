"""Blocks and records outbound network access in a Python process (a test ComfyUI server).

Python imports ``sitecustomize`` at start-up from ``sys.path``; ``ComfyServer(block_network=True)``
puts this folder on the server's PYTHONPATH, so the guard is active before ComfyUI, the node packs
and their libraries are imported. Every attempt to connect or send over IP (TCP or UDP, from
``socket``, ``urllib``, ``requests``, ``aiohttp``, ...) and every DNS lookup of a host name is refused
with ConnectionRefusedError and appended to the JSON-lines file named by $REENACT_NETWORK_LOG, with
the Python stack that made it. Local IPC (AF_UNIX) and binding/listening (the server itself) are
allowed. Sockets opened by C code (e.g. FFmpeg's own protocols) bypass Python and are not seen here.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import traceback

_LOG = os.environ.get("REENACT_NETWORK_LOG")
_LOCK = threading.Lock()
_LOCAL_NAMES = {None, "", "localhost", "127.0.0.1", "::1", "0.0.0.0", "::"}


def _refuse(call: str, target: object) -> None:
    entry = {"call": call, "target": repr(target), "pid": os.getpid(), "stack": traceback.format_stack()[:-2]}
    with _LOCK, open(_LOG, "a") as f:
        f.write(json.dumps(entry) + "\n")
    raise ConnectionRefusedError(f"network access is blocked in this process ({call} {target!r})")


def _is_ip(sock: socket.socket) -> bool:
    return sock.family in (socket.AF_INET, socket.AF_INET6)


def _install() -> None:
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_sendto, real_getaddrinfo = socket.socket.sendto, socket.getaddrinfo

    def connect(self, address):
        if _is_ip(self):
            _refuse("connect", address)
        return real_connect(self, address)

    def connect_ex(self, address):
        if _is_ip(self):
            _refuse("connect_ex", address)
        return real_connect_ex(self, address)

    def sendto(self, data, *args):
        if _is_ip(self):
            _refuse("sendto", args[-1])
        return real_sendto(self, data, *args)

    def getaddrinfo(host, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        if name not in _LOCAL_NAMES and not _is_numeric(name):
            _refuse("getaddrinfo", name)
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto = connect, connect_ex, sendto
    socket.getaddrinfo = getaddrinfo


def _is_numeric(name: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, name)
            return True
        except (OSError, TypeError):
            pass
    return False


if _LOG:
    _install()
