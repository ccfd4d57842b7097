#!/usr/bin/env bash
# Optional: LiteLLM's proxy in its own virtual environment (.venv-litellm), for comparing it with
# the room's nginx router (benchmarks/router_latency.py). The kit itself never imports LiteLLM.
#
# Why its own environment and hashes: a LiteLLM release series (1.107) on PyPI was compromised in
# 2026. requirements/router-litellm.txt pins one exact version outside it and every dependency
# with its SHA-256 (pip-compile --generate-hashes), so pip refuses any file that differs.
# Regenerate it with pip-tools: pip-compile --generate-hashes --strip-extras --allow-unsafe \
#   -o requirements/router-litellm.txt requirements/router-litellm.in
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${QWENKIT_LITELLM_VENV:-$ROOT/.venv-litellm}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --require-hashes --no-deps -r "$ROOT/requirements/router-litellm.txt"
echo "[litellm] $("$VENV/bin/litellm" --version 2>/dev/null | tail -n1) in $VENV (LITELLM_LOCAL_MODEL_COST_MAP=True when run by the kit)"
