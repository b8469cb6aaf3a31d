#!/usr/bin/env bash
# Install moorage's own systemd units: moorage.service (the control plane) and
# moorage-node@.service (inference nodes), the `moorage` system user they run as, its data
# directory and the venv they start. deploy/host-setup.sh runs this on systemd hosts; on
# its own: `sudo bash deploy/install-units.sh`. Idempotent. Installs, never enables, unless
# MOORAGE_START_CONTROL_PLANE=1 (then `systemctl enable --now moorage`): when to start the
# control plane is the operator's choice. See deploy/README.md.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="${MOORAGE_STATE_DIR:-/var/lib/moorage}"
LOG_DIR="${MOORAGE_LOG_DIR:-/var/log/moorage}"
TRAEFIK_DYNAMIC_DIR="${MOORAGE_TRAEFIK_DYNAMIC_DIR:-$STATE_DIR/traefik/dynamic}"
CONTROL_DATA_DIR="${MOORAGE_CONTROL_DATA_DIR:-$STATE_DIR/control}"
APP_VENV="${MOORAGE_APP_VENV:-/opt/moorage/venv}"
UNIT_DIR="${MOORAGE_SYSTEMD_UNIT_DIR:-/etc/systemd/system}"
START_CONTROL_PLANE="${MOORAGE_START_CONTROL_PLANE:-0}"
SERVICE_USER=moorage

CHANGES=()
log() { printf '[install-units] %s\n' "$*"; }
changed() { CHANGES+=("$1"); log "changed: $1"; }
die() { printf '[install-units] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $EUID -eq 0 ]] || die "run as root"
command -v systemctl >/dev/null || die "no systemctl: this host does not run systemd"
mkdir -p "$LOG_DIR"

if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
  useradd --system --user-group --home-dir "$CONTROL_DATA_DIR" --no-create-home \
    --shell /usr/sbin/nologin "$SERVICE_USER"
  changed "created system user $SERVICE_USER"
fi
if [[ ! -d /etc/moorage ]]; then
  install -d -m 0755 /etc/moorage
  changed "created /etc/moorage (for moorage.env and node-<name>.env)"
fi
# The database, master keys and operator key: this user's only. The route files: written
# by it, read by Traefik (root).
for dir_mode in "$CONTROL_DATA_DIR:700" "$TRAEFIK_DYNAMIC_DIR:755"; do
  dir="${dir_mode%:*}" mode="${dir_mode##*:}"
  if [[ "$(stat -c '%U %a' "$dir" 2>/dev/null)" != "$SERVICE_USER $mode" ]]; then
    install -d -o "$SERVICE_USER" -g "$SERVICE_USER" -m "$mode" "$dir"
    chown -R "$SERVICE_USER:" "$dir"
    changed "$dir: owner $SERVICE_USER, mode $mode"
  fi
done
case "$REPO_DIR" in
  /root/*|/home/*|/run/user/*)
    log "WARNING: moorage.service cannot read $REPO_DIR (ProtectHome=true): clone to /opt/moorage/src" ;;
esac

# The units run this checkout's code (an editable install): an update is `git pull` and a
# restart; only a change of dependencies (pyproject.toml) reinstalls.
stamp="$(sha256sum "$REPO_DIR/pyproject.toml" | cut -d' ' -f1) $REPO_DIR"
if [[ "$(cat "$APP_VENV/.moorage-installed" 2>/dev/null)" != "$stamp" ]]; then
  log "installing moorage ($REPO_DIR, editable) into $APP_VENV (log: $LOG_DIR/pip-moorage.log)"
  /usr/bin/python3 -m venv "$APP_VENV"
  "$APP_VENV/bin/pip" install -q --disable-pip-version-check -e "$REPO_DIR" \
    >"$LOG_DIR/pip-moorage.log" 2>&1 || die "pip install failed, see $LOG_DIR/pip-moorage.log"
  echo "$stamp" >"$APP_VENV/.moorage-installed"
  changed "installed moorage into $APP_VENV"
fi

units_changed=0
for unit in moorage.service moorage-node@.service; do  # the default paths, rewritten to this host's
  dst="$UNIT_DIR/$unit"
  sed -e "s#/var/lib/moorage/control#$CONTROL_DATA_DIR#g" \
      -e "s#/var/lib/moorage/traefik/dynamic#$TRAEFIK_DYNAMIC_DIR#g" \
      -e "s#/opt/moorage/venv#$APP_VENV#g" -e "s#/opt/moorage/src#$REPO_DIR#g" \
      "$REPO_DIR/deploy/systemd/$unit" >"$dst.new"
  if cmp -s "$dst.new" "$dst"; then
    rm -f "$dst.new"
  else
    mv "$dst.new" "$dst"; chmod 0644 "$dst"; units_changed=1; changed "installed $dst"
  fi
done
if ((units_changed)); then systemctl daemon-reload; fi

if [[ "$START_CONTROL_PLANE" == 1 ]]; then
  if ! systemctl is-active --quiet moorage; then
    systemctl enable --now moorage; changed "started moorage.service"
  elif ((units_changed)); then
    systemctl restart moorage; changed "restarted moorage.service"
  fi
else
  log "moorage.service is installed, not started: systemctl enable --now moorage"
fi

if ((${#CHANGES[@]})); then
  log "done: ${#CHANGES[@]} change(s)"
  exit "${MOORAGE_CHANGED_EXIT:-0}"  # host-setup.sh counts them
fi
log "done: nothing changed"
