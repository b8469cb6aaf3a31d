#!/usr/bin/env bash
# One entry point for a fresh checkout:
#   ./deploy/dev.sh run       set up the host (as root: dockerd, runsc, Traefik, base images) and
#                             run the control plane (embedded SQLite in ./.moorage)
#   ./deploy/dev.sh test      lint and type-check, set up the host, run every test
#   ./deploy/dev.sh mutation  mutation-test control/security/ and the Idempotency-Key modules (mutmut, [tool.mutmut] in
#                             pyproject.toml; fast tests only, no Docker, not part of `test`). Prints the score per file and
#                             fails below 90% or on a survivor not listed in docs/mutation-survivors.md. Extra arguments go
#                             to `mutmut run` (e.g. --max-children 4).
# MOORAGE_VENV=DIR uses that virtual environment as it is (nothing is installed into it);
# MOORAGE_HOST_SETUP=0 makes `run` leave the host as it is (it still says what is missing).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="${MOORAGE_VENV:-$repo/.venv}"
# This checkout's code first, whichever environment supplies the dependencies.
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
say() { printf '[dev] %s\n' "$*" >&2; }
moorage() { "$venv/bin/python" -m control.cli.main "$@"; }

ensure_venv() {
  if [[ -n "${MOORAGE_VENV:-}" ]]; then
    # Someone else's environment: an install here would repoint its editable moorage at this
    # checkout. Only check that it has this checkout's dependencies (by name, in a blink).
    local missing
    missing="$("$venv/bin/python" - <<'PY'
import importlib.metadata as md, re, tomllib
names = [re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0] for dep in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]]
def absent(name):
    try:
        return not md.version(name)
    except md.PackageNotFoundError:
        return True
print(", ".join(name for name in names if absent(name)))
PY
)" || missing="(its python does not run)"
    if [[ -n "$missing" ]]; then
      say "MOORAGE_VENV=$venv lacks $missing: pip install -e '.[test]' there, or unset MOORAGE_VENV"
      exit 1
    fi
    return
  fi
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

# Deployments need dockerd with runsc, Traefik and the base images. As root, the same
# idempotent host setup as `test` brings them up (about a second when all are there);
# otherwise, or if it fails, say what is missing and how to get it. The API serves either way.
prepare_host() {
  if [[ "$(id -u)" != 0 ]]; then
    say "not root: the host is left as it is (sudo bash deploy/host-setup.sh sets it up)"
  elif [[ "${MOORAGE_HOST_SETUP:-1}" != 1 ]]; then
    say "MOORAGE_HOST_SETUP=${MOORAGE_HOST_SETUP}: the host is left as it is"
  else
    say "host setup: dockerd + runsc + Traefik + base images (deploy/host-setup.sh; minutes the first time)"
    bash "$repo/deploy/host-setup.sh" >&2 || say "host setup failed (above)"
  fi
  local report
  if report="$(moorage admin check-host)"; then
    say "host ready to deploy: Docker engine, runsc, base images, Traefik, route directory"
  else
    say "deployments will fail until these are fixed (GET /readyz lists them too):"
    printf '%s\n' "$report" | sed 's/^/[dev]   /' >&2
    say "serving the API anyway"
  fi
}

run() {
  ensure_venv
  export MOORAGE_DATA_DIR="${MOORAGE_DATA_DIR:-$repo/.moorage}"
  prepare_host
  local key_file="$MOORAGE_DATA_DIR/operator.key"
  if [[ ! -f "$key_file" ]]; then
    say "first start: creating the operator key in $key_file (mode 0600)"
    moorage admin bootstrap --output-file "$key_file" >/dev/null
  fi
  say "operator key: $key_file   API: http://${MOORAGE_HOST:-127.0.0.1}:${MOORAGE_PORT:-7800}  (spec at /openapi.json)"
  exec "$venv/bin/python" -m control.cli.main serve "$@"
}

test_all() {
  ensure_venv
  if [[ "$(id -u)" != 0 ]]; then
    say "the tests drive a real Docker engine, runsc and Traefik: run as root (host setup installs them)"
    exit 1
  fi
  if [[ "${MOORAGE_SKIP_LINT:-}" != 1 ]]; then  # the quick loop on one test file may skip it
    say "lint, format and strict types (deploy/lint.sh)"
    MOORAGE_VENV="$venv" bash "$repo/deploy/lint.sh"
  fi
  say "host setup: dockerd + runsc + Traefik + base images (+ the tests' ACME server, pebble)"
  MOORAGE_TEST_TOOLS=1 bash "$repo/deploy/host-setup.sh"
  say "running the test suite"
  exec "$venv/bin/python" -m pytest "$@"
}

mutation() {
  if [[ -n "${MOORAGE_VENV:-}" ]]; then
    venv="$MOORAGE_VENV"  # provisioned elsewhere: only the mutation extra is added to it
  else
    ensure_venv
  fi
  # The extra's own requirements, not `-e .[mutation]`: reinstalling the project would
  # re-point an editable install that another checkout may share.
  local wanted
  wanted="$("$venv/bin/python" -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["mutation"])')"
  say "mutation extra: $wanted"
  # shellcheck disable=SC2086  # one requirement per word
  "$venv/bin/python" -m pip install --quiet $wanted 2>&1 | grep -v '^WARNING: Location' || true
  "$venv/bin/python" -c 'import mutmut' || { say "installing mutmut failed"; exit 1; }
  # A fresh run each time: mutmut reuses results kept in mutants/, which may come from other tests.
  rm -rf "$repo/mutants"
  say "mutmut run on control/security/ and the Idempotency-Key modules (work tree: mutants/)"
  local started=$SECONDS rc=0
  "$venv/bin/mutmut" run "$@" || rc=$?
  say "mutmut finished in $((SECONDS - started)) s (exit $rc)"
  if (( rc != 0 )); then
    exit "$rc"
  fi
  "$venv/bin/python" "$repo/deploy/mutation_report.py" --survivors "$repo/docs/mutation-survivors.md"
}

case "${1:-}" in
  run) shift; run "$@" ;;
  test) shift; test_all "$@" ;;
  mutation) shift; mutation "$@" ;;
  *) echo "usage: $0 run|test|mutation [args...]" >&2; exit 2 ;;
esac
