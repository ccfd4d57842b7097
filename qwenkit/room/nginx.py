"""The room's router: Debian's nginx, configured and run by the kit (no module, no database).

Why nginx (benchmarks/router_latency.py, README "Run it for a room"): it adds well under a
millisecond per request on a 2-core machine where LiteLLM's proxy adds tens of milliseconds, it
is one apt package, and it needs nothing from the internet at run time. What the config does:

- one `upstream` with a line per kit server, `least_conn` weighted by each server's slots: a
  request goes to the server with the most free slots, counted from the router's own open
  requests (exact while the room is the servers' only client, and current to the request,
  where a /health poll is a second old). /health decides who is in (`down` otherwise) and
  each server's weight; the room process rewrites the file and reloads when that changes;
- a failed connection takes a server out at once (`max_fails=1 fail_timeout=10s`) and the
  request goes to the next server; the /health poll keeps it out until it answers again;
- participants' keys in a `map` (an include file rendered from the 0600 key file); a request
  without a known key gets 401 before anything reaches a server; the servers' own key and a
  localhost Host header are put in by the router, so participants never see or need them;
- 503 with an OpenAI-style error when no server can take the request;
- streaming passes through unbuffered; no request or response ever touches a temp file.
"""
from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from qwenkit.errors import RoomError
from qwenkit.room.keys import Participant, write_private
from qwenkit.room.probe import Probe

__all__ = ["ALL_DOWN", "BAD_KEY", "CONNECT_TIMEOUT_S", "FAIL_TIMEOUT_S", "GENERATION_TIMEOUT_S", "MAX_BODY",
           "ONE_FAILED", "Nginx", "RouterSpec", "binds_every_interface", "find_nginx", "render_config", "render_map"]

MAX_BODY = "8m"        # a request body this size stays in memory (8 MB of text is far past any context)
FAIL_TIMEOUT_S = 10    # a server whose connection failed rests this long before nginx tries it again
CONNECT_TIMEOUT_S = 3
GENERATION_TIMEOUT_S = 900  # a long generation may stream this long between two reads

ALL_DOWN = ('{"error": {"message": "no model server of this room can take the request right now '
            '(all are down, loading or unreachable); try again in a minute or tell the workshop leader", '
            '"type": "service_unavailable", "code": "room_servers_down"}}')
ONE_FAILED = ('{"error": {"message": "the model server that took this request failed while answering; it is '
              'taken out of rotation, so a retry goes to another server", "type": "service_unavailable", '
              '"code": "room_server_failed"}}')
BAD_KEY = ('{"error": {"message": "missing, unknown or revoked room key: send Authorization: Bearer '
           '<your key from the workshop leader>", "type": "invalid_request_error", "code": "invalid_api_key"}}')


def find_nginx() -> str:
    """Path of the nginx binary (Debian puts it in /usr/sbin, often not on a user's PATH)."""
    for cand in (os.environ.get("QWENKIT_NGINX"), shutil.which("nginx"), "/usr/sbin/nginx", "/usr/local/sbin/nginx"):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise RoomError("nginx is not installed: the room's router is Debian's nginx",
                    "sudo apt-get install nginx  (Debian/Ubuntu/WSL2; bash scripts/ci_system_deps.sh does it), "
                    "or set QWENKIT_NGINX=/path/to/nginx")


def binds_every_interface(host: str) -> bool:
    """`host` is the any-address ("", 0.0.0.0, ::): a socket bound to it listens on every interface."""
    if not host:
        return True
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:  # a host name
        return False


@dataclass
class RouterSpec:
    """Everything the router's config depends on."""
    servers: list[str]          # root URLs of the kit servers (http://host:port)
    server_key: str | None      # the key every server of the room was started with
    dir: Path                   # the room's folder (config, map, logs, pid)
    host: str = "127.0.0.1"
    port: int = 4000
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    @property
    def local_host(self) -> str:
        """The address this machine reaches the router on: loopback when it listens on every interface."""
        if not binds_every_interface(self.host):
            return self.host
        return "::1" if ":" in self.host else "127.0.0.1"

    @property
    def local_root(self) -> str:
        """scheme://host:port of the router as this machine reaches it."""
        h = self.local_host
        return f"{self.scheme}://{f'[{h}]' if ':' in h else h}:{self.port}"


def _upstream_addr(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise RoomError(f"server {url}: the router talks plain HTTP to the kit servers",
                        "give the server's http://HOST:PORT address")
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    return f"{host}:{parts.port}"


def _quote(s: str) -> str:
    if any(c in s for c in "\"\\\n\r;{}'$"):
        raise RoomError(f"unexpected character in {s[:20]!r}...",
                        "keys and paths may not hold quotes, ';', '{', '}' or '$'")
    return f'"{s}"'


def render_map(participants: list[Participant]) -> str:
    """nginx map entries: the whole Authorization header -> participant name. nginx compares
    map strings without regard to case, so "bearer" works too, and a key keeps about 5.2 bits
    of its 6 per character (about 166 bits for the kit's 32-character keys)."""
    lines = ["# generated from the room's key file by qwenkit; edit that file, not this one"]
    for p in participants:
        lines.append(f"{_quote(f'Bearer {p.key}')} {_quote(p.name)};")
    return "\n".join(lines) + "\n"


def _worker_user() -> str:
    """Run as root (CI, containers): workers drop to nobody, as Debian's own config does."""
    if os.geteuid() != 0:
        return ""
    import grp
    try:
        grp.getgrnam("nogroup")
        return "user nobody nogroup;\n"
    except KeyError:
        return "user nobody;\n"


def render_config(spec: RouterSpec, probes: list[Probe], generation: int = 0) -> str:
    by_url = {p.url: p for p in probes}
    lines = []
    for url in spec.servers:
        p = by_url.get(url)
        weight = p.capacity if p else 1
        down = "" if (p and p.up) else " down"
        state = p.state if p else "not probed"
        lines.append(f"        server {_upstream_addr(url)} weight={weight} max_fails=1 "
                     f"fail_timeout={FAIL_TIMEOUT_S}s{down};  # {url}: {state}")
    d = spec.dir
    listen = f"{('[' + spec.host + ']') if ':' in spec.host else spec.host}:{spec.port}"
    tls = ""
    if spec.tls_cert:
        listen += " ssl"
        tls = (f"        ssl_certificate {_quote(str(spec.tls_cert))};\n"
               f"        ssl_certificate_key {_quote(str(spec.tls_key))};\n"
               "        ssl_protocols TLSv1.2 TLSv1.3;\n")
    auth = f"        proxy_set_header Authorization {_quote('Bearer ' + spec.server_key)};\n" if spec.server_key \
        else "        proxy_set_header Authorization \"\";\n"
    return f"""# qwenkit room router: generated by `python -m qwenkit room start`; rewritten on every change.
{_worker_user()}worker_processes 1;
daemon off;
pid {_quote(str(d / 'nginx.pid'))};
error_log {_quote(str(d / 'logs' / 'error.log'))} warn;
events {{ worker_connections 4096; }}
http {{
    server_tokens off;
    default_type application/json;
    client_body_temp_path {_quote(str(d / 'tmp' / 'body'))};
    proxy_temp_path {_quote(str(d / 'tmp' / 'proxy'))};
    fastcgi_temp_path {_quote(str(d / 'tmp' / 'fastcgi'))};
    uwsgi_temp_path {_quote(str(d / 'tmp' / 'uwsgi'))};
    scgi_temp_path {_quote(str(d / 'tmp' / 'scgi'))};
    log_format room '$msec\\t$room_participant\\t$status\\t$upstream_addr\\t$request_time\\t$request_method $uri';
    access_log {_quote(str(d / 'logs' / 'access.log'))} room buffer=16k flush=1s;

    # after a 502/504: were all servers tried (or none live), or did only one fail mid-answer?
    map $upstream_addr $room_all_down {{
        default 0;
        "room_servers" 1;
        "~^([^,]+, ){{{max(len(spec.servers) - 1, 0)}}}[^,]+$" 1;
    }}

    map $http_authorization $room_participant {{
        default "";
        include {_quote(str(d / 'participants.map'))};
    }}

    upstream room_servers {{
        zone room_servers 256k;
        least_conn;
{chr(10).join(lines)}
        keepalive 64;
    }}

    server {{
        listen {listen};
{tls}        client_max_body_size {MAX_BODY};
        client_body_buffer_size {MAX_BODY};

        # which config the workers run (the room waits for a reload to show here); no key needed, nothing secret
        location = /.room/generation {{
            default_type text/plain;
            return 200 "{generation}";
        }}
        location @room_down {{
            default_type application/json;
            if ($room_all_down = 0) {{
                return 503 '{ONE_FAILED}';
            }}
            return 503 '{ALL_DOWN}';
        }}
        location / {{
            if ($room_participant = "") {{
                add_header WWW-Authenticate Bearer always;
                return 401 '{BAD_KEY}';
            }}
            proxy_pass http://room_servers;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host "127.0.0.1";
            proxy_set_header Origin "";
{auth}            proxy_set_header X-Room-Participant $room_participant;
            proxy_buffering off;
            proxy_cache off;
            proxy_connect_timeout {CONNECT_TIMEOUT_S}s;
            proxy_read_timeout {GENERATION_TIMEOUT_S}s;
            proxy_send_timeout {GENERATION_TIMEOUT_S}s;
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries {max(len(spec.servers), 1)};
            proxy_intercept_errors off;
            error_page 502 503 504 = @room_down;
        }}
    }}
}}
"""


class Nginx:
    """One nginx master process in the foreground of its own session, owned by this object."""

    def __init__(self, spec: RouterSpec):
        self.spec = spec
        self.binary = find_nginx()
        self.conf = spec.dir / "nginx.conf"
        self.proc: subprocess.Popen | None = None
        for sub in ("logs", "tmp"):
            (spec.dir / sub).mkdir(parents=True, exist_ok=True)

    def _args(self, *extra: str) -> list[str]:
        return [self.binary, "-p", str(self.spec.dir), "-e", str(self.spec.dir / "logs" / "error.log"),
                "-c", str(self.conf), *extra]

    def write(self, config: str, participants_map: str) -> None:
        write_private(self.spec.dir / "participants.map", participants_map)
        write_private(self.conf, config)

    def test(self) -> None:
        r = subprocess.run(self._args("-t", "-q"), capture_output=True, text=True, timeout=30, check=False)
        if r.returncode != 0:   # nginx's own words say what is wrong: raised with them below
            raise RoomError(f"nginx refused the room's config {self.conf}:\n{(r.stderr or r.stdout).strip()[-1500:]}",
                            "check the server URLs, the port and the certificate files named above")

    def start(self, timeout: float = 10.0) -> None:
        self.test()
        with open(self.spec.dir / "logs" / "nginx.out", "ab") as log:   # nginx keeps its own copy of the fd
            proc = self.proc = subprocess.Popen(self._args(), stdin=subprocess.DEVNULL, stdout=log,
                                                stderr=subprocess.STDOUT, start_new_session=True)
        host = self.spec.local_host
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RoomError(f"nginx exited with code {proc.returncode} while starting:\n{self.error_tail()}",
                                f"is port {self.spec.port} free? (another router or program on it?)")
            try:
                with socket.create_connection((host, self.spec.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RoomError(f"nginx did not listen on {host}:{self.spec.port} within {timeout:g} s:\n{self.error_tail()}",
                        "see the error log named above")

    def reload(self, generation: int | None = None, timeout: float = 5.0) -> None:
        """Re-read config and key map; requests in flight finish on the old workers. With a
        generation, return once new connections are served by the new config."""
        self.test()
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGHUP)
        if generation is None:
            return
        import ssl

        import httpx
        url = f"{self.spec.local_root}/.room/generation"
        verify: ssl.SSLContext | bool = False
        if self.spec.tls_cert:
            ctx = ssl.create_default_context(cafile=str(self.spec.tls_cert))
            ctx.check_hostname = False  # this machine's own router, reached by loopback
            verify = ctx
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(url, verify=verify, timeout=1).text == str(generation):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        raise RoomError(f"nginx did not take up its new config within {timeout:g} s:\n{self.error_tail()}",
                        "see the error log named above")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGQUIT)  # graceful: finish what runs, then exit
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(3)

    def error_tail(self, n: int = 15) -> str:
        try:
            return "\n".join((self.spec.dir / "logs" / "error.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""
