#!/usr/bin/env bash
# Make a local base image trust the operator's extra CA certificates (MOORAGE_BUILD_CA_BUNDLE):
# its system store (/etc/ssl/certs/ca-certificates.crt) gains them, certificates only (a
# bundle holding a private key is refused, as the control plane refuses it). Idempotent: the
# image carries the certificates' hash as the label moorage.ca-bundle and is rebuilt only
# when they change. Usage: base-image-ca.sh IMAGE BUNDLE [PYTHON]; prints what it did.
# Builds and app containers get the bundle from the control plane whatever the base image
# holds (runtime/ca_bundle.py); this makes the images themselves trust it too.
set -euo pipefail
image=$1 bundle=$2 python=${3:-python3}
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOCKER="${MOORAGE_DOCKER:-/usr/bin/docker}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

PYTHONPATH="$REPO_DIR" "$python" - "$bundle" >"$work/moorage-extra.crt" <<'PY'
import sys
from pathlib import Path

from runtime.ca_bundle import CaBundleError, certificates

try:
    blocks = certificates(Path(sys.argv[1]).read_bytes(), source=f"MOORAGE_BUILD_CA_BUNDLE ({sys.argv[1]})")
except (CaBundleError, OSError) as exc:
    sys.exit(f"base-image-ca: {exc}")
sys.stdout.buffer.write(b"".join(blocks))
PY
hash="$(sha256sum "$work/moorage-extra.crt" | cut -c1-16)"
current="$("$DOCKER" image inspect -f '{{index .Config.Labels "moorage.ca-bundle"}}' "$image" 2>/dev/null || true)"
if [[ "$current" == "$hash" ]]; then
  echo "$image trusts the CA bundle already ($hash)"; exit 0
fi
# Debian images: update-ca-certificates rebuilds the store from scratch with the file added.
# Others (busybox): the store is the certificates alone.
cat >"$work/Dockerfile" <<EOF
FROM $image
COPY moorage-extra.crt /usr/local/share/ca-certificates/moorage-extra.crt
RUN if command -v update-ca-certificates >/dev/null 2>&1; then update-ca-certificates --fresh >/dev/null; \
    else mkdir -p /etc/ssl/certs && cp /usr/local/share/ca-certificates/moorage-extra.crt /etc/ssl/certs/ca-certificates.crt; fi
EOF
if ! "$DOCKER" build --pull=false --label "moorage.ca-bundle=$hash" -t "$image" "$work" >"$work/build.log" 2>&1; then
  cat "$work/build.log" >&2; exit 1
fi
echo "$image now trusts the CA bundle ($hash)"
