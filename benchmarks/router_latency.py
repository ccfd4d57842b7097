"""What the room's router adds to each request: nginx (the kit's choice) and LiteLLM's proxy
against calling a kit server directly. Prints a table; not a timed test.

    .venv/bin/python benchmarks/router_latency.py                 # nginx vs direct
    bash scripts/setup_litellm.sh && .venv/bin/python benchmarks/router_latency.py   # + LiteLLM

One kit server on the small default model (1 thread), one client with keep-alive (as the
openai client keeps it), paths interleaved round by round so that load on the machine falls
on all of them alike. Two requests: a chat completion of 1 token (what a participant sends)
and GET /v1/models (no model work: the router's cost alone). Added latency = the path's
median (p95) minus the direct path's median (p95) in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qwenkit.bench import free_port  # noqa: E402  (importing qwenkit loads llama.cpp first)

# isort: split
import httpx  # noqa: E402

LITELLM = ROOT / ".venv-litellm" / "bin" / "litellm"

# LiteLLM custom auth from the same kind of key file (no database): the comparison is like for like.
LITELLM_AUTH = '''
import os
from fastapi import Request
from litellm.proxy._types import UserAPIKeyAuth
_FILE = os.environ["ROOM_KEYS_FILE"]
_cache = {"sig": None, "keys": {}}
def _keys():
    st = os.stat(_FILE)
    sig = (st.st_mtime_ns, st.st_size)
    if sig != _cache["sig"]:
        keys = {}
        for line in open(_FILE):
            parts = line.split()
            if len(parts) == 2 and not line.startswith("#"):
                keys[parts[1]] = parts[0]
        _cache.update(sig=sig, keys=keys)
    return _cache["keys"]
async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    name = _keys().get(api_key)
    if name is None:
        raise Exception("unknown or revoked room key")
    return UserAPIKeyAuth(api_key=api_key, user_id=name)
'''


def start_litellm(srv, key_file: Path, work: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    (work / "room_auth.py").write_text(LITELLM_AUTH)
    (work / "litellm.yaml").write_text(json.dumps({  # JSON is YAML
        "model_list": [{"model_name": "room", "litellm_params": {
            "model": f"openai/{srv.alias}", "api_base": srv.base_url, "api_key": srv.api_key or "none"}}],
        "router_settings": {"routing_strategy": "least-busy"},
        "litellm_settings": {"telemetry": False, "drop_params": True},
        # LiteLLM refuses to start without a master key even when custom auth decides every request
        "general_settings": {"custom_auth": "room_auth.user_api_key_auth",
                             "master_key": "sk-" + secrets.token_hex(32)}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "LITELLM_"))}
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", ROOM_KEYS_FILE=str(key_file), PYTHONPATH=str(work),
               LITELLM_LOG="ERROR", NO_DOCS="True", DISABLE_ADMIN_UI="True")
    with open(work / "litellm.log", "wb") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([str(LITELLM), "--config", str(work / "litellm.yaml"), "--host", "127.0.0.1",
                                 "--port", str(port)], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("LiteLLM exited:\n" + (work / "litellm.log").read_text()[-3000:])
        try:
            if httpx.get(url + "/health/liveliness", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("LiteLLM did not start in 180 s:\n" + (work / "litellm.log").read_text()[-3000:])


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--no-litellm", action="store_true")
    ap.add_argument("--json", metavar="FILE", help="also save the figures")
    args = ap.parse_args()

    from qwenkit import room, server
    from qwenkit.config import RunConfig
    from qwenkit.models import default_model_path

    work = Path(tempfile.mkdtemp(prefix="router-bench-"))
    key = server.new_api_key()
    srv = server.start(RunConfig(model=str(default_model_path()), n_ctx=512, n_threads=1), port="any",
                       api_key=key, quiet=True)
    procs = []
    r = None
    try:
        r = room.start([srv.root_url], server_key=key, participants=1, dir=work / "room",
                       port=free_port(), poll_s=2.0)
        pkey = r.participants()[0].key
        paths = {"direct": (srv.root_url, key), "nginx room": (r.root_url, pkey)}
        nginx_v = subprocess.run([r.nginx.binary, "-v"], check=False, capture_output=True, text=True)
        notes = {"nginx room": nginx_v.stderr.strip()}
        if LITELLM.exists() and not args.no_litellm:
            proc, url = start_litellm(srv, r.keys_file, work)
            procs.append(proc)
            paths["LiteLLM proxy"] = (url, pkey)
            notes["LiteLLM proxy"] = "litellm " + subprocess.run(
                [str(ROOT / ".venv-litellm/bin/python"), "-c",
                 "import importlib.metadata as m; print(m.version('litellm'))"],
                check=False, capture_output=True, text=True).stdout.strip()
        else:
            print("(LiteLLM left out: run scripts/setup_litellm.sh to compare it)", file=sys.stderr)
        chat = {"model": "room", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 1,
                "temperature": 0}
        clients = {n: httpx.Client(base_url=u, headers={"Authorization": f"Bearer {k}"}, timeout=60)
                   for n, (u, k) in paths.items()}
        kinds = {"chat, 1 token": lambda c: c.post("/v1/chat/completions", json=chat),
                 "GET /v1/models": lambda c: c.get("/v1/models")}
        times: dict[tuple[str, str], list[float]] = {(n, kd): [] for n in paths for kd in kinds}
        for kd, call in kinds.items():
            for c in clients.values():  # warm-up: connections, caches, first-request work
                for _ in range(5):
                    warm = call(c)
                    if warm.status_code != 200:
                        raise SystemExit(f"warm-up: HTTP {warm.status_code}: {warm.text[:200]}")
            for i in range(args.rounds):
                order = list(clients.items())
                order = order[i % len(order):] + order[:i % len(order)]
                for n, c in order:
                    t = time.perf_counter()
                    resp = call(c)
                    times[(n, kd)].append((time.perf_counter() - t) * 1000)
                    if resp.status_code != 200:
                        raise SystemExit(f"{n}: HTTP {resp.status_code}: {resp.text[:200]}")
        rows = []
        for kd in kinds:
            d = times[("direct", kd)]
            dm, dp = statistics.median(d), pct(d, 0.95)
            for n in paths:
                xs = times[(n, kd)]
                m, p = statistics.median(xs), pct(xs, 0.95)
                rows.append({"request": kd, "path": n, "median_ms": m, "p95_ms": p,
                             "added_median_ms": None if n == "direct" else m - dm,
                             "added_p95_ms": None if n == "direct" else p - dp})
        host = f"{platform.node()}, {os.cpu_count()} cores, {platform.processor() or platform.machine()}"
        print(f"router latency: {args.rounds} rounds, one kit server (SmolLM2-135M, 1 thread), "
              f"keep-alive client; {host}")
        print(f"{'request':<15} {'path':<14} {'median ms':>9} {'p95 ms':>8} {'added median':>13} {'added p95':>10}")
        for row in rows:
            am = "" if row["added_median_ms"] is None else f"{row['added_median_ms']:+.2f}"
            ap95 = "" if row["added_p95_ms"] is None else f"{row['added_p95_ms']:+.2f}"
            print(f"{row['request']:<15} {row['path']:<14} {row['median_ms']:>9.2f} {row['p95_ms']:>8.2f} "
                  f"{am:>13} {ap95:>10}")
        for n, v in notes.items():
            print(f"  {n}: {v}")
        if "LiteLLM proxy" in paths:
            print("  LiteLLM answers GET /v1/models from its own config (no server behind it): "
                  "only the chat row compares.")
        if args.json:
            from qwenkit import bench
            meta = bench.machine_info()
            meta.setdefault("model", "SmolLM2-135M-Instruct.Q4_1.gguf")
            Path(args.json).write_text(json.dumps({"meta": meta, "host": host, "rounds": args.rounds, "rows": rows,
                                                   "notes": notes}, indent=1))
        return 0
    finally:
        for child in procs:
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
        if r:
            r.stop()
        srv.stop()


if __name__ == "__main__":
    sys.exit(main())
