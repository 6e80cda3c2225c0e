#!/usr/bin/env bash
# docker/build-rootfs.sh OUT_DIR PYTHON [IMAGE...]   (as root; `make images` runs it)
#
# The chart's images without Docker or a registry (IMAGE: user, hub; both by
# default): a Debian bookworm root file system from Debian's packages
# (mmdebstrap), imaginghub's wheel and its dependencies from the package
# index, installed by docker/IMAGE/install.sh, the same script its
# Dockerfile runs. Then runc checks it, as uid 1000:
#   user: `imaginghub --help`, and the imaging kernel started and stopped;
#   hub:  docker/check-hub.py: the programs the chart runs from it, and
#         PostgreSQL (imaginghub-postgresql) with Orthanc on its index, with
#         the chart's own Orthanc configuration (ci/values/orthanc-postgres.yaml).
# Prints what each took (CHECK_ONLY=1 checks and packs a root file system
# built before, again). OUT_DIR/IMAGE-rootfs is the root file system,
# OUT_DIR/IMAGE-rootfs.tar.gz the same packed (what `umoci`, `buildah` or
# `docker import` take).
set -Eeuo pipefail
[ $# -ge 2 ] || { echo "usage: $0 OUT_DIR PYTHON [user] [hub]" >&2; exit 2; }
OUT=$1; PY=$2; shift 2
IMAGES=("$@"); [ ${#IMAGES[@]} -gt 0 ] || IMAGES=(user hub)
HERE=$(cd "$(dirname "$0")" && pwd -P); REPO=$(dirname "$HERE")
LOGS=$OUT/logs
log() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[images] ERROR: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root (mmdebstrap, chroot, runc)"
for t in mmdebstrap runc; do command -v $t >/dev/null || die "missing $t (apt-get install $t)"; done
for i in "${IMAGES[@]}"; do [ -f "$HERE/$i/install.sh" ] || die "no image '$i' (user, hub)"; done
mkdir -p "$OUT" "$LOGS"
MOUNTS=()
cleanup() { for m in "${MOUNTS[@]}"; do umount -l "$m" 2>/dev/null || true; done; }
trap cleanup EXIT

TORCH=$(grep -o 'torch==[0-9.]*' "$REPO/pyproject.toml" | head -n 1)
log "imaginghub's wheel"
rm -rf "$OUT/wheels"
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$OUT/wheels" "$REPO" \
  >"$LOGS/wheel.log" 2>&1 || { tail -20 "$LOGS/wheel.log"; die "pip wheel failed"; }
rm -rf "$REPO/build" "$REPO"/*.egg-info

build_root() {  # build_root IMAGE VAR=VALUE...: OUT/IMAGE-rootfs made by its install.sh
  local image=$1; shift
  local ROOT=$OUT/$image-rootfs
  log "$image: Debian bookworm root file system (mmdebstrap, minbase)"
  rm -rf "$ROOT"
  mmdebstrap --quiet --variant=minbase --include=ca-certificates bookworm "$ROOT" \
    >"$LOGS/$image-mmdebstrap.log" 2>&1 ||
    { tail -20 "$LOGS/$image-mmdebstrap.log"; die "mmdebstrap failed"; }
  T1=$SECONDS
  log "$image: docker/$image/install.sh in it"
  mkdir -p "$ROOT/tmp/wheels"
  cp "$OUT"/wheels/*.whl "$ROOT/tmp/wheels/"
  cp "$HERE/$image/install.sh" "$ROOT/tmp/install.sh"
  cp "$REPO/pyproject.toml" "$ROOT/tmp/pyproject.toml"
  [ "$image" = hub ] && cp "$HERE/hub/imaginghub-postgresql" "$ROOT/tmp/"
  cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
  for m in proc dev; do
    mount --rbind "/$m" "$ROOT/$m"; MOUNTS+=("$ROOT/$m")
  done
  # this machine's package sources (a site points PIP_INDEX_URL at its mirror)
  local PIPENV=()
  for d in /opt/wheels /opt/pypi /opt/pypi-more; do
    [ -d "$d" ] || continue
    mkdir -p "$ROOT$d"; mount --bind "$d" "$ROOT$d"; MOUNTS+=("$ROOT$d")
  done
  for v in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_TRUSTED_HOST PIP_DEFAULT_TIMEOUT; do
    [ -n "${!v:-}" ] && PIPENV+=("$v=${!v}")
  done
  # the certificates this machine trusts for the package indexes, PyPI's and
  # npm's (a site's proxy CA too)
  local CA=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
  [ -f "$CA" ] && cp "$CA" "$ROOT/tmp/build-ca.pem" && PIPENV+=("PIP_CERT=/tmp/build-ca.pem" \
    "NODE_EXTRA_CA_CERTS=/tmp/build-ca.pem" "npm_config_cafile=/tmp/build-ca.pem")
  [ -n "${npm_config_registry:-}" ] && PIPENV+=("npm_config_registry=$npm_config_registry")
  [ -f /etc/pip.conf ] && cp /etc/pip.conf "$ROOT/etc/pip.conf"
  [ -d /etc/xdg/pip ] && mkdir -p "$ROOT/etc/xdg" && cp -r /etc/xdg/pip "$ROOT/etc/xdg/"
  chroot "$ROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "${PIPENV[@]}" \
    WHEELS=/tmp/wheels PYPROJECT=/tmp/pyproject.toml "$@" sh /tmp/install.sh \
    >"$LOGS/$image-install.log" 2>&1 ||
    { tail -30 "$LOGS/$image-install.log"; die "$image: install.sh failed"; }
  cleanup; MOUNTS=()
  rm -rf "$ROOT/tmp/wheels" "$ROOT/tmp/install.sh" "$ROOT/tmp/pyproject.toml" \
    "$ROOT/tmp/imaginghub-postgresql" "$ROOT/tmp/build-ca.pem" "$ROOT/etc/pip.conf" \
    "$ROOT/etc/xdg/pip" "$ROOT/opt/wheels" "$ROOT/opt/pypi" "$ROOT/opt/pypi-more"
  : >"$ROOT/etc/resolv.conf"
}

run_in() {  # run_in IMAGE NAME CWD ARGS...: the container with ARGS, its output in LOGS/IMAGE-NAME.log
  local image=$1 name=$2 cwd=$3; shift 3
  local ROOT=$OUT/$image-rootfs BUNDLE=$OUT/$image-bundle
  rm -rf "$BUNDLE"; mkdir -p "$BUNDLE"
  (cd "$BUNDLE" && runc spec)
  "$PY" - "$BUNDLE/config.json" "$ROOT" "$cwd" "$@" <<'PYEOF'
import json, sys
path, root, cwd, *args = sys.argv[1:]
spec = json.load(open(path))
spec["root"] = {"path": root, "readonly": False}
p = spec["process"]
p["terminal"] = False
p["args"] = args
p["user"] = {"uid": 1000, "gid": 1000}
p["cwd"] = cwd
# the Dockerfiles' PATH: the venv's, then Debian's image's default
p["env"] = ["PATH=/opt/imaginghub/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
            "/sbin:/bin", f"HOME={cwd}", "LANG=C.UTF-8"]
# the host's network (loopback); every other namespace its own
spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]
spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != "/sys"] + [
    {"destination": "/sys", "type": "bind", "source": "/sys", "options": ["rbind", "ro"]}]
json.dump(spec, open(path, "w"), indent=1)
PYEOF
  runc run --bundle "$BUNDLE" "imaginghub-$image-$name-$$" >"$LOGS/$image-$name.log" 2>&1 ||
    { tail -30 "$LOGS/$image-$name.log"; die "$image: $name failed in the container"; }
}

check_user() {
  run_in user help /home/jovyan imaginghub --help
  grep -q "usage: imaginghub" "$LOGS/user-help.log" || die "imaginghub --help printed no usage"
  run_in user kernel /home/jovyan python -c '
from jupyter_client.manager import start_new_kernel
km, kc = start_new_kernel(kernel_name="imaging", startup_timeout=180)
reply = kc.execute_interactive("import imaginghub.kernels, torch, monai; print(\"kernel ok\", torch.__version__, monai.__version__)", timeout=180)
assert reply["content"]["status"] == "ok", reply["content"]
km.shutdown_kernel(now=True)
print("kernel started and stopped")'
  grep -q "kernel started and stopped" "$LOGS/user-kernel.log" || die "the kernel did not start"
  CHECKED="imaginghub --help; the imaging kernel started: $(grep -o 'kernel ok.*' "$LOGS/user-kernel.log" | head -n 1)"
}

check_hub() {
  local ROOT=$OUT/hub-rootfs
  # the chart's own Orthanc configuration, as Helm renders it
  "$PY" - "$REPO/charts/imaginghub" >"$ROOT/tmp/orthanc.json" <<'PYEOF'
import sys
import helm_python as helm, yaml
chart = sys.argv[1]
values = yaml.safe_load(open(f"{chart}/ci/values/orthanc-postgres.yaml"))
out = helm.Chart.load(chart).render(values, name="ih", namespace="imaginghub", is_install=True)
for text in out.values():
    for d in yaml.safe_load_all(text):
        if d and d["kind"] == "ConfigMap" and "orthanc.json" in (d.get("data") or {}):
            print(d["data"]["orthanc.json"])
PYEOF
  cp "$HERE/check-hub.py" "$ROOT/tmp/check-hub.py"
  chmod 0644 "$ROOT/tmp/orthanc.json" "$ROOT/tmp/check-hub.py"
  read -r P1 P2 P3 < <("$PY" -c 'import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
  run_in hub check /srv/imaginghub python3 /tmp/check-hub.py /tmp/orthanc.json "$P1" "$P2" "$P3"
  rm -f "$ROOT/tmp/orthanc.json" "$ROOT/tmp/check-hub.py"
  grep -q "hub image checked" "$LOGS/hub-check.log" || die "the hub image's check failed"
  cat "$LOGS/hub-check.log"
  CHECKED="$(grep -c '^check:' "$LOGS/hub-check.log") checks (docker/check-hub.py): Orthanc on PostgreSQL, $(grep -o 'jupyterhub: .*' "$LOGS/hub-check.log")"
}

REPORT=()
for image in "${IMAGES[@]}"; do
  T0=$SECONDS; T1=$SECONDS
  if [ "${CHECK_ONLY:-}" = 1 ] && [ -f "$OUT/$image-rootfs/.imaginghub-built" ]; then
    log "$image: CHECK_ONLY=1: the root file system as it is"
  elif [ "$image" = user ]; then build_root user TORCH="$TORCH"; else build_root hub; fi
  touch "$OUT/$image-rootfs/.imaginghub-built"
  T2=$SECONDS
  log "$image: runc checks as uid 1000"
  CHECKED=""
  "check_$image"
  T3=$SECONDS
  log "$image: packing"
  tar -C "$OUT/$image-rootfs" --numeric-owner -czf "$OUT/$image-rootfs.tar.gz" .
  T4=$SECONDS
  REPORT+=("$image image (root file system) in $OUT/$image-rootfs"
    "  size:            $(du -sh --apparent-size "$OUT/$image-rootfs" | cut -f1) unpacked, $(du -sh "$OUT/$image-rootfs.tar.gz" | cut -f1) packed"
    "  Debian root:     $((T1 - T0)) s (mmdebstrap)"
    "  Python packages: $((T2 - T1)) s (docker/$image/install.sh)"
    "  runc checks:     $((T3 - T2)) s ($CHECKED)"
    "  packing:         $((T4 - T3)) s"
    "  in all:          $((T4 - T0)) s")
done
printf '%s\n' "${REPORT[@]}" | tee "$OUT/report.txt"
