# default slots on a GPU build (parallel=0 -> memory plan), and batch invariance with a shared KV pool
import qwenkit, glob, json
from qwenkit import server
from qwenkit.config import RunConfig
m = sorted(glob.glob("/tmp/qwenkit-models/*.gguf"))[0]
with server.start(RunConfig(model=m, n_ctx=8192), port="any", quiet=True) as srv:
    h = srv.health(); print("DEFAULT_SLOTS", json.dumps({"slots": h["slots"], "status": srv.status().get("parallel"), "kv_unified": srv.status().get("kv_unified")}))
