"""Is a kit server up, and how many of its slots are free? One GET, answered as a Probe.

The kit's server answers `GET /health` with
`{"status": "ok", "slots": {"total": N, "busy": B, "idle": I}, "queue": {"waiting": Q, "limit": L}}`
(503 `{"status": "loading"}` while the model loads). A server without that route (older kit
servers, plain llama_cpp.server) is probed with `GET /v1/models` and counted as one slot.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from qwenkit.errors import RoomError

__all__ = ["PROBE_TIMEOUT_S", "Probe", "probe", "probe_all", "root_url"]

PROBE_TIMEOUT_S = 2.0  # a server that takes longer to say "ok" is treated as down


@dataclass
class Probe:
    url: str                      # the server's root URL (no /v1)
    state: str                    # "ok", "loading", "down", "wrong key", "error"
    detail: str = ""
    total: int | None = None      # slots, from /health (None: not reported)
    busy: int | None = None
    waiting: int | None = None    # queued requests
    queue_limit: int | None = None
    source: str = ""              # "/health" or "/v1/models"
    raw: dict = field(default_factory=dict)

    @property
    def up(self) -> bool:
        return self.state == "ok"

    @property
    def idle(self) -> int | None:
        return None if self.total is None or self.busy is None else max(self.total - self.busy, 0)

    @property
    def capacity(self) -> int:
        """Slots to weigh the server by (1 when it does not say)."""
        return max(self.total or 1, 1)


def root_url(url: str) -> str:
    """http://h:p/v1 or http://h:p/ -> http://h:p (what the router and the probes need)."""
    u = url.strip().rstrip("/")
    if u.endswith("/v1"):
        u = u[:-3]
    parts = urlsplit(u)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
        raise RoomError(f"server URL {url!r} needs a scheme, host and port",
                        "write it as http://HOST:PORT (as `python -m qwenkit serve` prints it)")
    return u


def probe(url: str, api_key: str | None, client=None, timeout: float = PROBE_TIMEOUT_S) -> Probe:
    """Ask one server how it is; never raises for network trouble (that is the answer 'down')."""
    import httpx

    root = root_url(url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    own = client is None
    client = client or httpx.Client(timeout=timeout)
    try:
        try:
            r = client.get(root + "/health", headers=headers, timeout=timeout)
            if r.status_code == 404:  # a server without /health: liveness from the model list
                r = client.get(root + "/v1/models", headers=headers, timeout=timeout)
                return _from_models(root, r)
            return _from_health(root, r)
        except httpx.TimeoutException:
            return Probe(root, "down", f"no answer within {timeout:g} s")
        except httpx.HTTPError as e:
            return Probe(root, "down", f"{type(e).__name__}: {e}"[:160])
    finally:
        if own:
            client.close()


def _json(r) -> dict:
    try:
        body = r.json()
        return body if isinstance(body, dict) else {}
    except ValueError:
        return {}


def _refused(root: str, r) -> Probe | None:
    if r.status_code in (401, 403):
        msg = (_json(r).get("error") or {}).get("message", "") if isinstance(_json(r).get("error"), dict) else ""
        return Probe(root, "wrong key" if r.status_code == 401 else "error",
                     f"HTTP {r.status_code}: {msg or r.text[:120]}")
    return None


def _from_health(root: str, r) -> Probe:
    bad = _refused(root, r)
    if bad:
        return bad
    body = _json(r)
    status = str(body.get("status", "")).lower()
    slots = body.get("slots") if isinstance(body.get("slots"), dict) else {}
    queue = body.get("queue") if isinstance(body.get("queue"), dict) else {}

    def num(d, k):
        v = d.get(k)
        return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    p = Probe(root, "ok", total=num(slots, "total"), busy=num(slots, "busy"),
              waiting=num(queue, "waiting"), queue_limit=num(queue, "limit"), source="/health", raw=body)
    if p.busy is None and p.total is not None and num(slots, "idle") is not None:
        p.busy = p.total - num(slots, "idle")
    if r.status_code == 200 and status in ("ok", ""):
        return p
    p.state = "loading" if status == "loading" or r.status_code == 503 else "error"
    p.detail = f"HTTP {r.status_code} status {status or '?'}"
    return p


def _from_models(root: str, r) -> Probe:
    bad = _refused(root, r)
    if bad:
        return bad
    if r.status_code == 200:
        return Probe(root, "ok", source="/v1/models")
    return Probe(root, "error", f"HTTP {r.status_code} from /v1/models", source="/v1/models")


def probe_all(urls: list[str], api_key: str | None, timeout: float = PROBE_TIMEOUT_S) -> list[Probe]:
    """All servers at once (a slow one does not delay the others' verdicts)."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    with httpx.Client(timeout=timeout) as client, ThreadPoolExecutor(max(len(urls), 1)) as pool:
        return list(pool.map(lambda u: probe(u, api_key, client, timeout), urls))
