"""Source of notebooks/08_room.ipynb (regenerate with `python tools/nb.py`)."""

NOTEBOOKS = {"08_room": [
("md", """
# 08 · Run it for a room: several servers behind one address

**For workshop leaders.** **What you learn:** how many participants one server takes (its slots), and
when a room outgrows one GPU, how to put two or three kit servers behind one address with
`python -m qwenkit room`: one key per participant (revocable by editing a file), requests spread to the
server with free slots, a dead server out of rotation within seconds, the servers' own key never handed
out. The router is Debian's nginx, configured by the kit (why nginx and not LiteLLM's proxy: it adds
well under a millisecond per request on a 2-core machine, LiteLLM about 17 ms; see the README).

**Time:** about 1 minute here (small default model, servers on this machine standing in for GPU
machines). **Needs:** the kit (`make setup`) and nginx (`sudo apt-get install nginx`).
"""),
("code", """
# Parameters (the test suite runs these; on a real day the servers run on the GPU machines)
N_SERVERS = 2          # kit servers to start here, standing in for GPU machines
PARTICIPANTS = 3       # keys to make: p01, p02, ...
N_THREADS = 1          # per server (several share this machine's cores)
ROOM_DIR = None        # None: a fresh temporary folder (a real room: ~/.qwenkit/room)
"""),
("md", """
## 1. One GPU: how many people can one server take?

A kit server answers several requests at once, one per **slot**; more wait in its queue. `GET /health`
says how many slots are busy, which is what the room's router reads. Start the servers with one shared
**server key** (the room makes it; participants never see it).
"""),
("code", """
import tempfile
from pathlib import Path

import openai

from qwenkit import room, server
from qwenkit.config import RunConfig
from qwenkit.models import default_model_path
from qwenkit.room.nginx import find_nginx

room_dir = Path(ROOM_DIR or tempfile.mkdtemp(prefix="room-"))
print("router:", find_nginx())             # raises with the install command when nginx is missing
key = room.server_key(room_dir)            # what every server of the room is started with
cfg = RunConfig(model=str(default_model_path()), n_ctx=512, n_threads=N_THREADS)
servers = [server.start(cfg, port="any", api_key=key, quiet=True) for _ in range(N_SERVERS)]
for s in servers:
    print(s.base_url, s.health() or "(no /health on this server: the room counts it as one slot)")
"""),
("md", """
## 2. Several: one address, one key each

`room.start` writes nginx's configuration (one line per server, weighted by its slots), makes a key per
participant in a file of mode 0600, starts the router on 127.0.0.1 and keeps it in step with the servers'
`/health` every 2 seconds. The table below is what you hand out (the command line does the same:
`python -m qwenkit room start --server URL --server URL --participants 20`).
"""),
("code", """
r = room.start([s.root_url for s in servers], server_key=key, participants=PARTICIPANTS, dir=room_dir,
               port=0)  # 0: a free port
print("participants use:", r.base_url)
print(r.keys_table())
"""),
("md", """
## 3. A participant's view: the ordinary `openai` client, their own key
"""),
("code", """
people = r.participants()
client = openai.OpenAI(base_url=r.base_url, api_key=people[0].key, max_retries=3)
for _ in range(2 * N_SERVERS):
    out = client.chat.completions.create(model="any", max_tokens=12,
                                         messages=[{"role": "user", "content": "Name a color."}])
    print(repr(out.choices[0].message.content))
print(r.load_table())   # routed: requests each server answered
"""),
("md", """
## 4. Revoke a key: edit the file (or `python -m qwenkit room keys --revoke NAME`)

The router re-reads the key file within a couple of seconds; nothing restarts and nobody else notices.
"""),
("code", """
import time

gone = people[-1]
kept = [line for line in r.keys_file.read_text().splitlines(True) if not line.startswith(gone.name + " ")]
r.keys_file.write_text("".join(kept))
bad = openai.OpenAI(base_url=r.base_url, api_key=gone.key, max_retries=0)
for _ in range(50):
    try:
        bad.models.list()
        time.sleep(0.2)
    except openai.AuthenticationError as e:
        print(gone.name, "->", e.status_code, e.body["message"] if isinstance(e.body, dict) else e.body)
        break
"""),
("md", """
## 5. A server dies: the room carries on

Stop one server. The next request that would have gone to it goes to another (the failed connection
takes it out at once), and the `/health` poll keeps it out until it answers again. When every server is
down, participants get a 503 that says so.
"""),
("code", """
servers[0].stop()
time.sleep(2.5)         # one /health poll
answer = client.chat.completions.create(model="any", max_tokens=8, messages=[{"role": "user", "content": "Hi"}])
print(answer.choices[0].message.content)
print(r.load_table())
"""),
("code", """
r.stop()
for s in servers:
    s.stop()
"""),
("md", """
## On the day

```bash
# leader's machine: the servers' key (same for all; never handed out)
python -m qwenkit room server-key
# each GPU machine:
QWENKIT_API_KEY=<that key> python -m qwenkit serve --host 0.0.0.0 --allow-remote --model unsloth/Qwen3.5-35B-A3B-GGUF:Q4_K_M --fit
# leader's machine: router on the LAN with a certificate the kit makes; prints the keys to hand out
python -m qwenkit room start --server http://gpu1:8000 --server http://gpu2:8000 --participants 20 --host 0.0.0.0 --tls auto
python -m qwenkit room status          # per-server load, from another terminal
```
"""),
]}
