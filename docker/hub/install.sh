#!/bin/sh
# The hub image's contents (the hub, configurable-http-proxy, the data, job
# and viewer services, Dask Gateway and its traefik, Orthanc with its
# PostgreSQL index, Debian's PostgreSQL), installed into a Debian bookworm
# root as root by docker/hub/Dockerfile.
#   WHEELS     a folder with imaginghub's wheel
#   PYPROJECT  the repository's pyproject.toml (the OHIF app's pinned hash)
set -eu
: "${WHEELS:=/tmp/wheels}" "${PYPROJECT:=/tmp/pyproject.toml}"
VENV=/opt/imaginghub/venv
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends python3 python3-venv ca-certificates tini \
    orthanc orthanc-dicomweb orthanc-postgresql postgresql-15 node-configurable-http-proxy \
    npm >/dev/null
id imaginghub >/dev/null 2>&1 || useradd --uid 1000 --create-home --home-dir /srv/imaginghub \
    --shell /usr/sbin/nologin imaginghub
python3 -m venv "$VENV"
PIP="$VENV/bin/pip --disable-pip-version-check --no-cache-dir --quiet"
$PIP install --find-links "$WHEELS" "imaginghub[hub,k8s]"
# the browser viewer's app (OHIF), fetched once with npm and checked by its hash
"$VENV/bin/python" -m imaginghub.hub.services.viewer.install "$PYPROJECT" \
    "$VENV/share/imaginghub/ohif"
install -m 0755 /tmp/imaginghub-postgresql /usr/local/bin/imaginghub-postgresql
apt-get purge -y -qq npm >/dev/null && apt-get autoremove -y -qq >/dev/null
apt-get clean
rm -rf /var/lib/apt/lists/* /root/.cache /root/.npm
