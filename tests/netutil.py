"""Socket facts the server tests check, read from /proc (no extra tools), and the small fake
HTTP servers the client tests talk to."""
from __future__ import annotations

import http.server
import json
import socket
import threading
from pathlib import Path


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a LISTEN socket on `port`, from /proc/net/tcp{,6}."""
    out = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            addr, p = f[1].rsplit(":", 1)
            if int(p, 16) == port and f[3] == "0A":
                if name == "tcp":
                    out.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
                else:
                    out.add(socket.inet_ntop(socket.AF_INET6, b"".join(
                        bytes.fromhex(addr[i:i + 8])[::-1] for i in range(0, 32, 8))))
    return out


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """Base for the tests' small fake HTTP servers: HTTP/1.1, no request log, whole-body replies."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def send_body(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, obj, status: int = 200) -> None:
        self.send_body(status, json.dumps(obj).encode())

    def read_json(self) -> dict:
        return json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")


def serve(handler) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Run `handler` on 127.0.0.1 (a free port) in a daemon thread; (server, root URL)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"
