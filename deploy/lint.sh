#!/usr/bin/env bash
# Lint, format check and strict typing, with the settings in pyproject.toml:
#   ./deploy/lint.sh
# Stops at the first step that fails. The tools come from the project's virtual environment
# (.venv, as deploy/dev.sh makes it; MOORAGE_VENV=/path picks another one).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="${MOORAGE_VENV:-$repo/.venv}"
sources=(control runtime inference tests bench deploy)
typed=(control runtime inference)
say() { printf '[lint] %s\n' "$*" >&2; }

for tool in ruff mypy; do
  if [[ ! -x "$venv/bin/$tool" ]]; then
    say "$tool is not in $venv: install the test extra (pip install -e '.[test]'), or set MOORAGE_VENV"
    exit 2
  fi
done

now_ms() { date +%s%3N; }

# step NAME HINT COMMAND...: run COMMAND, print how long it took, stop the script if it failed.
step() {
  local name="$1" hint="$2"
  shift 2
  local started
  started="$(now_ms)"
  say "$name: $*"
  local rc=0
  "$@" || rc=$?
  local took
  took="$(awk -v ms="$(( $(now_ms) - started ))" 'BEGIN { printf "%.1f", ms / 1000 }')"
  if (( rc != 0 )); then
    say "$name FAILED (exit $rc, ${took}s): $hint"
    exit 1
  fi
  say "$name ok (${took}s)"
}

step "ruff check" "fix the findings above; 'ruff check --fix' applies the safe ones" \
  "$venv/bin/ruff" check "${sources[@]}"
step "ruff format" "run '$venv/bin/ruff format ${sources[*]}' and commit the result" \
  "$venv/bin/ruff" format --check --output-format concise "${sources[@]}"
step "mypy (strict)" "fix the type errors above; a '# type: ignore' must name its code" \
  "$venv/bin/mypy" "${typed[@]}"
say "all checks passed"
