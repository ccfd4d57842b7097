"""`python -m qwenkit room ...`: several kit servers behind one address for a workshop.

    python -m qwenkit room server-key                       # the key to start every server with
    python -m qwenkit room start --server http://gpu1:8000 --server http://gpu2:8000 --participants 20
    python -m qwenkit room start --config room.json --host 0.0.0.0 --tls auto
    python -m qwenkit room keys [--add NAME ...] [--revoke NAME ...]
    python -m qwenkit room status                           # per-server load of the running room
"""
from __future__ import annotations

import json
import time
from pathlib import Path

__all__ = ["add_cli", "cmd_server_key", "cmd_start", "cmd_keys", "cmd_status"]


def _dir(args) -> Path:
    from qwenkit.room.room import default_dir
    return Path(args.dir).expanduser() if args.dir else default_dir()


def cmd_server_key(args) -> int:
    from qwenkit.room import server_key
    key = server_key(_dir(args))
    print(key)
    print(f"# on each GPU machine (same key everywhere; participants never see it):\n"
          f"#   QWENKIT_API_KEY={key} python -m qwenkit serve --host 0.0.0.0 --allow-remote --model ...",
          file=__import__("sys").stderr)
    return 0


def _servers(args) -> list[str]:
    servers = list(args.server or [])
    if args.config:
        data = json.loads(Path(args.config).read_text())
        servers += [s if isinstance(s, str) else s["url"] for s in data.get("servers", [])]
    return servers


def cmd_start(args) -> int:
    from qwenkit import room
    from qwenkit.room import keys as keyfile
    from qwenkit.room.tls import fingerprint

    d = _dir(args)
    names = args.name or (keyfile.numbered_names(args.participants) if args.participants else [])
    r = room.start(_servers(args), server_key=room.server_key(d), participants=names, dir=d,
                   host=args.host, port=args.port, keys_file=args.keys_file, tls=args.tls,
                   tls_cert=args.tls_cert, tls_key=args.tls_key)
    try:
        print(f"room router: {r.base_url}   (model name: any; Ctrl-C stops the router, not the servers)")
        print(f"keys file:   {r.keys_file}   (mode 0600; delete a line to revoke it, no restart)")
        if r.spec.tls_cert:
            print(f"certificate: {r.spec.tls_cert}   hand it out; SHA-256 {fingerprint(r.spec.tls_cert)}")
        print()
        print(r.keys_table())
        print()
        print(r.load_table())
        last = time.monotonic()
        while True:
            time.sleep(1)
            if not r.nginx.alive():
                print(f"nginx stopped:\n{r.nginx.error_tail()}")
                return 1
            if args.every and time.monotonic() - last >= args.every:
                print(time.strftime("\n%H:%M:%S ") + r.load_table())
                last = time.monotonic()
    except KeyboardInterrupt:
        print("stopping the router")
        return 0
    finally:
        r.stop()


def cmd_keys(args) -> int:
    from qwenkit.room import keys as keyfile

    path = Path(args.keys_file) if args.keys_file else _dir(args) / "keys.txt"
    new = []
    if args.add or args.count:
        names = list(args.add or [])
        if args.count:
            have = {p.name for p in keyfile.read_keys(path)} if path.exists() else set()
            names += [n for n in keyfile.numbered_names(len(have) + args.count) if n not in have][:args.count]
        new = keyfile.add_participants(path, names)
    if args.revoke:
        keyfile.revoke(path, args.revoke)
        print(f"revoked: {', '.join(args.revoke)} (a running router stops taking their keys within a second or two)")
    shown = new if new else (keyfile.read_keys(path) if path.exists() else [])
    print(keyfile.table(shown) if shown else f"no participants in {path} yet (--add NAME or --count N)")
    return 0


def cmd_status(args) -> int:
    from qwenkit.room import format_load, read_state
    state = read_state(_dir(args))
    if not state:
        print(f"no room is running from {_dir(args)} (start one: python -m qwenkit room start --server URL ...)")
        return 1
    age = time.time() - state["time"]
    print(format_load(state["rows"], state["url"]) + f"\n(as of {age:.0f} s ago; keys: {state['keys_file']})")
    if state.get("last_error"):
        print(f"last problem: {state['last_error']}")
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("room", help="several kit servers behind one address, one key per participant",
                       description=__doc__.split("\n\n")[0])
    rs = p.add_subparsers(dest="room_verb", metavar="ROOM_VERB")

    def common(q):
        q.add_argument("--dir",
                       help="the room's folder (keys, config, logs); default ~/.qwenkit/room or $QWENKIT_ROOM_DIR")

    q = rs.add_parser("server-key", help="print the key every server of the room must be started with")
    common(q)
    q.set_defaults(func=cmd_server_key)

    q = rs.add_parser("start", help="start the router (nginx) in front of the servers; Ctrl-C stops it")
    common(q)
    q.add_argument("--server", action="append", metavar="URL",
                   help="a kit server, http://HOST:PORT (repeat per server)")
    q.add_argument("--config", metavar="FILE", help='JSON: {"servers": ["http://gpu1:8000", ...]}')
    q.add_argument("--participants", type=int, default=0, metavar="N", help="make keys for p01..pN (those missing)")
    q.add_argument("--name", action="append", metavar="NAME", help="make a key for this participant (repeat)")
    q.add_argument("--keys-file", metavar="FILE", help="the key file (default: keys.txt in the room's folder)")
    q.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1; others need TLS)")
    q.add_argument("--port", type=int, default=4000)
    q.add_argument("--tls", choices=["auto"], help="auto: the kit makes a certificate for this machine's addresses")
    q.add_argument("--tls-cert", metavar="FILE", help="your own certificate (PEM) ...")
    q.add_argument("--tls-key", metavar="FILE", help="... and its key")
    q.add_argument("--every", type=float, default=30, metavar="S",
                   help="print the load table every S seconds (0: never)")
    q.set_defaults(func=cmd_start)

    q = rs.add_parser("keys", help="list, add or revoke participants' keys")
    common(q)
    q.add_argument("--add", nargs="+", metavar="NAME")
    q.add_argument("--count", type=int, metavar="N", help="add N numbered participants")
    q.add_argument("--revoke", nargs="+", metavar="NAME")
    q.add_argument("--keys-file", metavar="FILE")
    q.set_defaults(func=cmd_keys)

    q = rs.add_parser("status", help="per-server state, slots and requests of the running room")
    common(q)
    q.set_defaults(func=cmd_status)
    p.set_defaults(func=lambda a: p.print_help() or 2)
