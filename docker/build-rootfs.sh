#!/usr/bin/env bash
# docker/build-rootfs.sh OUT_DIR PYTHON   (as root; `make images` runs it)
#
# The user image without Docker or a registry: a Debian bookworm root file
# system from Debian's packages (mmdebstrap), imaginghub's wheel and its
# dependencies from the package index, installed by docker/user/install.sh,
# the same script the Dockerfile runs. Then runc runs `imaginghub --help` and
# starts the imaging kernel in it, as uid 1000. Prints what it took.
# OUT_DIR/user-rootfs is the root file system, OUT_DIR/user-rootfs.tar.gz
# the same packed (what `umoci`, `buildah` or `docker import` take).
set -Eeuo pipefail
[ $# -eq 2 ] || { echo "usage: $0 OUT_DIR PYTHON" >&2; exit 2; }
OUT=$1; PY=$2
HERE=$(cd "$(dirname "$0")" && pwd -P); REPO=$(dirname "$HERE")
ROOT=$OUT/user-rootfs; BUNDLE=$OUT/user-bundle; LOGS=$OUT/logs
log() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[images] ERROR: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root (mmdebstrap, chroot, runc)"
for t in mmdebstrap runc; do command -v $t >/dev/null || die "missing $t (apt-get install $t)"; done
T0=$SECONDS
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

log "Debian bookworm root file system (mmdebstrap, minbase)"
rm -rf "$ROOT"
mmdebstrap --quiet --variant=minbase --include=ca-certificates bookworm "$ROOT" \
  >"$LOGS/mmdebstrap.log" 2>&1 || { tail -20 "$LOGS/mmdebstrap.log"; die "mmdebstrap failed"; }
T1=$SECONDS

log "installing imaginghub[hub,kernel,ml] and $TORCH into it (docker/user/install.sh)"
mkdir -p "$ROOT/tmp/wheels"
cp "$OUT"/wheels/*.whl "$ROOT/tmp/wheels/"
cp "$HERE/user/install.sh" "$ROOT/tmp/install.sh"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
for m in proc dev; do
  mount --rbind "/$m" "$ROOT/$m"; MOUNTS+=("$ROOT/$m")
done
# this machine's package sources (a site points PIP_INDEX_URL at its mirror)
PIPENV=()
for d in /opt/wheels /opt/pypi /opt/pypi-more; do
  [ -d "$d" ] || continue
  mkdir -p "$ROOT$d"; mount --bind "$d" "$ROOT$d"; MOUNTS+=("$ROOT$d")
done
for v in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_TRUSTED_HOST PIP_DEFAULT_TIMEOUT; do
  [ -n "${!v:-}" ] && PIPENV+=("$v=${!v}")
done
# the certificates this machine trusts for the package index (a site's proxy CA too)
CA=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
[ -f "$CA" ] && cp "$CA" "$ROOT/tmp/build-ca.pem" && PIPENV+=("PIP_CERT=/tmp/build-ca.pem")
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$ROOT/etc/pip.conf"
[ -d /etc/xdg/pip ] && mkdir -p "$ROOT/etc/xdg" && cp -r /etc/xdg/pip "$ROOT/etc/xdg/"
chroot "$ROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "${PIPENV[@]}" \
  TORCH="$TORCH" WHEELS=/tmp/wheels sh /tmp/install.sh >"$LOGS/install.log" 2>&1 ||
  { tail -30 "$LOGS/install.log"; die "install.sh failed"; }
cleanup; MOUNTS=()
rm -rf "$ROOT/tmp/wheels" "$ROOT/tmp/install.sh" "$ROOT/tmp/build-ca.pem" "$ROOT/etc/pip.conf" "$ROOT/etc/xdg/pip" \
  "$ROOT/opt/wheels" "$ROOT/opt/pypi" "$ROOT/opt/pypi-more"
: >"$ROOT/etc/resolv.conf"
T2=$SECONDS

log "runc: imaginghub --help, and the imaging kernel's start, as uid 1000"
rm -rf "$BUNDLE"; mkdir -p "$BUNDLE"
(cd "$BUNDLE" && runc spec)
run_in() {  # run_in NAME ARGS...: the container with ARGS, its output in LOGS/NAME.log
  local name=$1; shift
  "$PY" - "$BUNDLE/config.json" "$ROOT" "$@" <<'PYEOF'
import json, sys
path, root, *args = sys.argv[1:]
spec = json.load(open(path))
spec["root"] = {"path": root, "readonly": False}
p = spec["process"]
p["terminal"] = False
p["args"] = args
p["user"] = {"uid": 1000, "gid": 1000}
p["cwd"] = "/home/jovyan"
p["env"] = ["PATH=/opt/imaginghub/venv/bin:/usr/bin:/bin", "HOME=/home/jovyan",
            "LANG=C.UTF-8"]
# the host's network (the kernel talks over loopback); every other namespace its own
spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]
spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != "/sys"] + [
    {"destination": "/sys", "type": "bind", "source": "/sys", "options": ["rbind", "ro"]}]
json.dump(spec, open(path, "w"), indent=1)
PYEOF
  runc run --bundle "$BUNDLE" "imaginghub-$name-$$" >"$LOGS/$name.log" 2>&1 ||
    { tail -30 "$LOGS/$name.log"; die "$name failed in the container"; }
}
run_in help imaginghub --help
grep -q "usage: imaginghub" "$LOGS/help.log" || die "imaginghub --help printed no usage"
run_in kernel python -c '
from jupyter_client.manager import start_new_kernel
km, kc = start_new_kernel(kernel_name="imaging", startup_timeout=180)
reply = kc.execute_interactive("import imaginghub.kernels, torch, monai; print(\"kernel ok\", torch.__version__, monai.__version__)", timeout=180)
assert reply["content"]["status"] == "ok", reply["content"]
km.shutdown_kernel(now=True)
print("kernel started and stopped")'
grep -q "kernel started and stopped" "$LOGS/kernel.log" || die "the kernel did not start"
T3=$SECONDS

log "packing $ROOT"
tar -C "$ROOT" --numeric-owner -czf "$OUT/user-rootfs.tar.gz" .
T4=$SECONDS
printf '%s\n' \
  "user image (root file system) in $ROOT" \
  "  size:            $(du -sh --apparent-size "$ROOT" | cut -f1) unpacked, $(du -sh "$OUT/user-rootfs.tar.gz" | cut -f1) packed" \
  "  Debian root:     $((T1 - T0)) s (mmdebstrap)" \
  "  Python packages: $((T2 - T1)) s (install.sh: imaginghub[hub,kernel,ml], $TORCH)" \
  "  runc checks:     $((T3 - T2)) s (imaginghub --help; the imaging kernel started: $(grep -o 'kernel ok.*' "$LOGS/kernel.log" | head -n 1))" \
  "  packing:         $((T4 - T3)) s" \
  "  in all:          $((T4 - T0)) s" | tee "$OUT/report.txt"
