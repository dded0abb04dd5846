#!/usr/bin/env bash
# Set up and run the whole nnkgeo test suite on a fresh Debian/Ubuntu machine.
# Creates .venv, installs the project with its test extras, installs what the
# suite needs from the system (redis-server; the tests start their own server on a
# free port), then runs ruff and pytest. Extra arguments go to pytest.
# Each phase says what it does first: the install alone takes minutes on a fresh clone.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'test.sh: %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  say "installing $* with apt-get..."
  as_root apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $python"
  "$python" -m venv .venv 2>/dev/null || { apt_install python3-venv && "$python" -m venv .venv; }
fi
say "installing nnkgeo[test] into .venv (a few minutes the first time)..."
.venv/bin/python -m pip install -q --upgrade pip
# [test] is everything: the server (with the engine), mlflow and the test tools. torch
# is pinned exactly in the engine extra; a looser pin would pull a CUDA build.
.venv/bin/python -m pip install -q -e '.[test]'

command -v redis-server >/dev/null || apt_install redis-server
# Debian's Chromium: the HTML report is checked in a real headless browser.
command -v chromium >/dev/null || apt_install chromium

say "ruff: lint and format check"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
say "pytest: the whole suite (the integration tests start their own Redis, API and workers)"
exec .venv/bin/python -m pytest -q "$@"
