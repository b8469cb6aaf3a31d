#!/usr/bin/env bash
# One entry point for a fresh checkout:
#   ./deploy/dev.sh run    set up and run the control plane (embedded SQLite in ./.moorage)
#   ./deploy/dev.sh test   lint and type-check, set up the host (dockerd, runsc, Traefik, base images), run every test
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="$repo/.venv"
say() { printf '[dev] %s\n' "$*" >&2; }

ensure_venv() {
  local stamp="$venv/.moorage-installed" want
  want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return
  fi
  if [[ ! -x "$venv/bin/python" ]]; then
    say "creating virtual environment in .venv"
    python3 -m venv "$venv"
  fi
  say "installing moorage and its test dependencies (pip)"
  "$venv/bin/python" -m pip install --quiet --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
  "$venv/bin/python" -m pip install --quiet -e '.[test,inference-cpu]' 2>&1 | grep -v '^WARNING: Location' || true
  "$venv/bin/python" -c 'import control, runtime' || { say "install failed"; exit 1; }
  echo "$want" >"$stamp"
}

run() {
  ensure_venv
  export MOORAGE_DATA_DIR="${MOORAGE_DATA_DIR:-$repo/.moorage}"
  local key_file="$MOORAGE_DATA_DIR/operator.key"
  if [[ ! -f "$key_file" ]]; then
    say "first start: creating the operator key in $key_file (mode 0600)"
    "$venv/bin/moorage" admin bootstrap --output-file "$key_file" >/dev/null
  fi
  say "operator key: $key_file   API: http://${MOORAGE_HOST:-127.0.0.1}:${MOORAGE_PORT:-7800}  (spec at /openapi.json)"
  exec "$venv/bin/moorage" serve "$@"
}

test_all() {
  ensure_venv
  if [[ "$(id -u)" != 0 ]]; then
    say "the tests drive a real Docker engine, runsc and Traefik: run as root (host setup installs them)"
    exit 1
  fi
  if [[ "${MOORAGE_SKIP_LINT:-}" != 1 ]]; then  # the quick loop on one test file may skip it
    say "lint, format and strict types (deploy/lint.sh)"
    bash "$repo/deploy/lint.sh"
  fi
  say "host setup: dockerd + runsc + Traefik + base images"
  bash "$repo/deploy/host-setup.sh"
  say "running the test suite"
  exec "$venv/bin/python" -m pytest "$@"
}

case "${1:-}" in
  run) shift; run "$@" ;;
  test) shift; test_all "$@" ;;
  *) echo "usage: $0 run|test [args...]" >&2; exit 2 ;;
esac
