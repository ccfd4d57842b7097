"""A room: several kit servers behind one router address, one key per participant.

    from qwenkit import room
    r = room.start(["http://gpu1:8000", "http://gpu2:8000"], server_key=KEY, participants=20)
    print(r.keys_table())            # hand these out
    print(r.load_table())            # per server: state, slots busy/total, queue, requests routed
    r.stop()

The Room owns the nginx process (qwenkit.room.nginx) and one watcher thread that, every
POLL_S seconds, asks each server's /health and re-reads the key file; when who is in rotation,
a server's slot count, or the keys change, it rewrites the config and reloads nginx (requests
in flight finish; nothing restarts). A server whose port refuses connections (process gone) is
out within one poll (2 s), and at once for the request whose connection failed; one that accepts
but does not answer /health is out after two slow probes in a row (at most about 8 s).
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from qwenkit.errors import RoomError
from qwenkit.room import keys as keyfile
from qwenkit.room.nginx import Nginx, RouterSpec, binds_every_interface, render_config, render_map
from qwenkit.room.probe import Probe, probe_all, root_url

__all__ = ["DEFAULT_PORT", "LOOPBACK", "POLL_S", "Room", "default_dir", "format_load", "read_state", "server_key",
           "start"]

POLL_S = 2.0
DEFAULT_PORT = 4000
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def default_dir() -> Path:
    return Path(os.environ.get("QWENKIT_ROOM_DIR") or Path.home() / ".qwenkit" / "room")


def server_key(dir: Path | None = None, create: bool = True) -> str | None:
    """The key every server of the room is started with (QWENKIT_API_KEY wins; else the room's
    server.key file, made on first use). Participants never see it."""
    if os.environ.get("QWENKIT_API_KEY"):
        return os.environ["QWENKIT_API_KEY"]
    path = Path(dir or default_dir()) / "server.key"
    if path.exists():
        keyfile.check_private(path)
        return path.read_text().strip() or None
    if not create:
        return None
    from qwenkit.server import new_api_key
    key = new_api_key()
    keyfile.write_private(path, key + "\n")
    return key


class Room:
    def __init__(self, servers: list[str], *, server_key: str | None, dir: Path | str | None = None,
                 host: str = "127.0.0.1", port: int = DEFAULT_PORT, keys_file: Path | str | None = None,
                 tls: str | None = None, tls_cert: Path | str | None = None, tls_key: Path | str | None = None,
                 poll_s: float = POLL_S):
        if not servers:
            raise RoomError("a room needs at least one kit server",
                            "name them: --server http://HOST:PORT (one per server)")
        roots = [root_url(u) for u in servers]
        if len(set(roots)) != len(roots):
            raise RoomError("the same server is named twice", "name each server once")
        self.dir = Path(dir or default_dir()).expanduser().resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)  # keys, config (with the servers' key) and logs live here
        self.keys_file = Path(keys_file) if keys_file else self.dir / "keys.txt"
        self.poll_s = poll_s
        exposed = host not in LOOPBACK
        cert: Path | None
        key: Path | None
        if tls_cert or tls_key:
            if not (tls_cert and tls_key):
                raise RoomError("a certificate needs its key file too", "give both --tls-cert FILE and --tls-key FILE")
            cert, key = Path(tls_cert).resolve(), Path(tls_key).resolve()
        elif tls == "auto":
            from qwenkit.room.tls import lan_addresses, make_self_signed
            names = ([] if binds_every_interface(host) else [host]) + lan_addresses()
            cert, key = make_self_signed(self.dir, names)
        else:
            cert = key = None
        if exposed and not cert:
            raise RoomError(f"listening on {host} without TLS would send every key and prompt in clear over the "
                            "network",
                            "add --tls auto (the kit makes a certificate) or --tls-cert FILE --tls-key FILE")
        if int(port) == 0:  # any free port (tests, notebooks); the CLI's default is 4000
            import socket
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
                sock.bind((host, 0))
                port = sock.getsockname()[1]
        self.spec = RouterSpec(servers=roots, server_key=server_key, dir=self.dir, host=host, port=int(port),
                               tls_cert=cert, tls_key=key)
        self.nginx = Nginx(self.spec)
        self.probes: list[Probe] = []
        self._keys_sig = b""
        self._conf = ""
        self._routed: dict[str, int] = {}
        self._failed: dict[str, int] = {}
        self._log_pos = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.reloads = 0
        self.last_error = ""
        self.out_since: dict[str, float] = {}
        self._generation = 0
        self._slow: dict[str, int] = {}
        self._rotation: list[str] = []  # servers in rotation in the config nginx runs now

    # ---- addresses ----
    @property
    def root_url(self) -> str:
        return self.spec.local_root

    @property
    def base_url(self) -> str:
        return self.root_url + "/v1"

    # ---- keys ----
    def add_participants(self, names: list[str]) -> list[keyfile.Participant]:
        new = keyfile.add_participants(self.keys_file, names)
        self.refresh()
        return new

    def revoke(self, names: list[str]) -> None:
        keyfile.revoke(self.keys_file, names)
        self.refresh()

    def participants(self) -> list[keyfile.Participant]:
        return keyfile.read_keys(self.keys_file) if self.keys_file.exists() else []

    def keys_table(self) -> str:
        return keyfile.table(self.participants())

    # ---- life ----
    def start(self) -> "Room":
        if not self.keys_file.exists():
            keyfile.write_private(self.keys_file, keyfile.render([]))
        self.probes = probe_all(self.spec.servers, self.spec.server_key)
        wrong = [p for p in self.probes if p.state == "wrong key"]
        if wrong:
            raise RoomError(f"{', '.join(p.url for p in wrong)} refused the room's server key",
                            "start every server of the room with the same key: QWENKIT_API_KEY=<python -m "
                            "qwenkit room server-key> python -m qwenkit serve ...")
        self._apply(force=True, reload=False)
        self.nginx.start()
        self._write_state()
        self._thread = threading.Thread(target=self._watch, name="qwenkit-room-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)
        self.nginx.stop(timeout=5)
        try:
            (self.dir / "state.json").unlink()
        except OSError:
            pass

    def __enter__(self) -> "Room":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def refresh(self) -> bool:
        """Probe now and apply what changed (the watcher does this every poll_s); True if reloaded."""
        prev = {p.url: p for p in self.probes}
        before = {p.url: p.up for p in self.probes}
        probes = probe_all(self.spec.servers, self.spec.server_key)
        for i, p in enumerate(probes):
            # a busy server may answer /health late once: out after two slow answers in a row (about
            # 2 x (poll + timeout) = 8 s), at once when the connection is refused
            if p.state == "down" and p.detail.startswith("no answer") and before.get(p.url):
                self._slow[p.url] = self._slow.get(p.url, 0) + 1
                if self._slow[p.url] < 2:
                    probes[i] = prev[p.url]
            else:
                self._slow.pop(p.url, None)
        self.probes = probes
        now = time.monotonic()
        for p in self.probes:
            if before.get(p.url) and not p.up:
                self.out_since[p.url] = now  # when the room took it out (time.monotonic())
            elif p.up:
                self.out_since.pop(p.url, None)
        return self._apply()

    def _apply(self, force: bool = False, reload: bool = True) -> bool:
        with self._lock:
            try:
                text = self.keys_file.read_bytes()
                people = keyfile.read_keys(self.keys_file)
            except (OSError, RoomError) as e:  # a half-edited or unsafe file: keep the last good keys
                self.last_error = str(e)
                if not self._conf:
                    raise
                people, text = None, self._keys_sig
            same = render_config(self.spec, self.probes)  # without the generation: did anything change?
            if not force and text == self._keys_sig and same == self._conf:
                return False
            self._generation += 1
            conf = render_config(self.spec, self.probes, self._generation)
            if people is not None:
                self.nginx.write(conf, render_map(people))
            else:
                keyfile.write_private(self.nginx.conf, conf)
            self._keys_sig, self._conf = text, same
            if reload:
                self.nginx.reload(self._generation)
                self.reloads += 1
            self._rotation = [p.url for p in self.probes if p.up]
            return True

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.refresh()
                self._count_requests()
                self._write_state()
            except Exception as e:  # noqa: BLE001 - any fault: keep watching; the router serves its last config
                self.last_error = f"{type(e).__name__}: {e}"

    # ---- load ----
    def in_rotation(self) -> list[str]:
        """Servers that the running router sends requests to (its config, reloaded)."""
        return list(self._rotation)

    def _count_requests(self) -> None:
        """Requests each server answered, from the router's access log (read on from last time)."""
        path = self.dir / "logs" / "access.log"
        try:
            with open(path, "rb") as f:
                f.seek(self._log_pos)
                data = f.read()
        except OSError:
            return
        end = data.rfind(b"\n") + 1
        self._log_pos += end
        addr_to_url = {u.split("://", 1)[1]: u for u in self.spec.servers}
        for line in data[:end].decode("utf-8", "replace").splitlines():
            fields = line.split("\t")
            if len(fields) < 4 or fields[3] in ("", "-"):
                continue
            tried = [a.strip() for a in fields[3].replace(" : ", ", ").split(",")]
            for a in tried[:-1]:
                u = addr_to_url.get(a)
                if u:
                    self._failed[u] = self._failed.get(u, 0) + 1
            u = addr_to_url.get(tried[-1])
            if u:
                self._routed[u] = self._routed.get(u, 0) + 1

    def load(self) -> list[dict]:
        self._count_requests()
        rows = []
        for p in self.probes:
            rows.append({"server": p.url, "state": p.state, "note": "" if p.up else p.detail,
                         "slots_busy": p.busy, "slots_total": p.total, "queue": p.waiting,
                         "routed": self._routed.get(p.url, 0), "failed_over": self._failed.get(p.url, 0),
                         "source": p.source})
        return rows

    def load_table(self) -> str:
        return format_load(self.load(), self.base_url)

    def _write_state(self) -> None:
        state = {"pid": os.getpid(), "nginx_pid": self.nginx.proc.pid if self.nginx.proc else None,
                 "url": self.base_url, "time": time.time(), "keys_file": str(self.keys_file),
                 "rows": self.load(), "reloads": self.reloads, "last_error": self.last_error,
                 "cert": str(self.spec.tls_cert) if self.spec.tls_cert else None}
        keyfile.write_private(self.dir / "state.json", json.dumps(state, indent=1))


def format_load(rows: list[dict], url: str = "") -> str:
    def v(x):
        return "-" if x is None else str(x)
    width = max([len(r["server"]) for r in rows] + [6])
    out = [f"room {url}".rstrip(),
           f"{'server':<{width}}  {'state':<9}  {'slots busy/total':<16}  queue  routed  failed  note"]
    for r in rows:
        slots = f"{v(r['slots_busy'])}/{v(r['slots_total'])}" if r["slots_total"] is not None else "-"
        out.append(f"{r['server']:<{width}}  {r['state']:<9}  {slots:<16}  {v(r['queue']):<5}  "
                   f"{r['routed']:<6}  {r['failed_over']:<6}  {r.get('note', '')[:60]}".rstrip())
    return "\n".join(out)


def read_state(dir: Path | None = None) -> dict | None:
    """The running room's last state (written every poll), or None when no room runs there."""
    path = Path(dir or default_dir()) / "state.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    try:
        os.kill(int(state["pid"]), 0)
    except (OSError, KeyError, ValueError, TypeError):
        return None
    return state


def start(servers: list[str], *, server_key: str | None, participants: int | list[str] = 0, **kw) -> Room:
    """Start a room: the router on loopback (unless host= and TLS are given), keys for
    `participants` (a count of numbered names p01, p02, ... or a list of names) added to its key file."""
    r = Room(servers, server_key=server_key, **kw)
    names = keyfile.numbered_names(participants) if isinstance(participants, int) else list(participants)
    if r.keys_file.exists():
        have = {p.name for p in keyfile.read_keys(r.keys_file)}
        names = [n for n in names if n not in have]
    if names:
        keyfile.add_participants(r.keys_file, names)
    return r.start()
