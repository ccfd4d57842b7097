#!/usr/bin/env bash
# Debian packages the test suite needs beyond Python: Chromium for the browser test
# (tests/test_browser.py drives it through Playwright's client with executable_path; no
# browser is ever downloaded, `playwright install` is never run).
# Idempotent and quiet: installs only what is missing, prints one line per action.
# Usage: bash scripts/ci_system_deps.sh            (as root, or with sudo available)
set -euo pipefail

PACKAGES=(chromium nginx)           # Debian's chromium: /usr/bin/chromium; nginx: the room's router (tests/test_room.py)
missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "[deps] system packages present: ${PACKAGES[*]}"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[deps] apt-get not found: install ${missing[*]} with your package manager (the browser test skips without them)" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "[deps] not root and no sudo: cannot install ${missing[*]}" >&2; exit 1
  fi
fi
echo "[deps] installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
command -v chromium >/dev/null 2>&1 || { echo "[deps] chromium did not install" >&2; exit 1; }
echo "[deps] installed: $(chromium --version 2>/dev/null | head -n1)"
