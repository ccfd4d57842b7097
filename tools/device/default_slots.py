# default slots on a GPU build (parallel=0 -> memory plan), and batch invariance with a shared KV pool
import glob
import json

from qwenkit import server
from qwenkit.config import RunConfig

m = sorted(glob.glob("/tmp/qwenkit-models/*.gguf"))[0]
with server.start(RunConfig(model=m, n_ctx=8192), port="any", quiet=True) as srv:
    h, status = srv.health(), srv.status()
    print("DEFAULT_SLOTS", json.dumps({"slots": h["slots"], "status": status.get("parallel"),
                                       "kv_unified": status.get("kv_unified")}))
