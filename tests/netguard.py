"""Cut a Python process off from every address but loopback, for tests that must show a
notebook works without the network.

`STARTUP` is the source of an IPython startup file: it wraps `socket.getaddrinfo` (names other
than localhost fail at once, as with no DNS) and `socket.socket.connect` / `connect_ex`
(non-loopback addresses are refused at once, as a firewall that rejects would). Each blocked
attempt is appended to the file named by $QWENKIT_NETGUARD_LOG, so a test can show that the
notebook did try the real hub and was refused. `install(dir)` makes an IPYTHONDIR whose
default profile runs it at kernel start, before any cell."""
from __future__ import annotations

from pathlib import Path

STARTUP = r'''
import os as _os
import socket as _socket

_LOG = _os.environ.get("QWENKIT_NETGUARD_LOG")


def _netguard_record(what):
    if _LOG:
        with open(_LOG, "a") as f:
            f.write(what + "\n")


def _netguard_loopback(host):
    h = host.decode() if isinstance(host, bytes) else str(host)
    return h in ("localhost", "::1", "") or h.startswith("127.")


_orig_getaddrinfo = _socket.getaddrinfo
_orig_connect = _socket.socket.connect
_orig_connect_ex = _socket.socket.connect_ex


def _netguard_getaddrinfo(host, *args, **kw):
    if host is None or _netguard_loopback(host):
        return _orig_getaddrinfo(host, *args, **kw)
    _netguard_record(f"getaddrinfo {host}")
    raise _socket.gaierror(_socket.EAI_NONAME, f"netguard: {host} is not loopback: blocked")


def _netguard_allowed(address):
    return not isinstance(address, tuple) or _netguard_loopback(address[0])   # AF_UNIX paths pass


def _netguard_connect(self, address):
    if not _netguard_allowed(address):
        _netguard_record(f"connect {address}")
        raise ConnectionRefusedError(111, f"netguard: {address} is not loopback: refused")
    return _orig_connect(self, address)


def _netguard_connect_ex(self, address):
    if not _netguard_allowed(address):
        _netguard_record(f"connect_ex {address}")
        return 111
    return _orig_connect_ex(self, address)


_socket.getaddrinfo = _netguard_getaddrinfo
_socket.socket.connect = _netguard_connect
_socket.socket.connect_ex = _netguard_connect_ex
_netguard_record("netguard on")
'''


def install(ipython_dir: Path) -> Path:
    """An IPYTHONDIR whose default profile runs the guard at startup; returns it."""
    startup = Path(ipython_dir) / "profile_default" / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    (startup / "00-netguard.py").write_text(STARTUP)
    return Path(ipython_dir)
