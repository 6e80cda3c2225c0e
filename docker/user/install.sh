#!/bin/sh
# The user image's contents, installed into a Debian bookworm root as root:
# by docker/user/Dockerfile (a site's registry build) and by `make images`
# (mmdebstrap + this script in a chroot, then runc), so both build the same.
#
#   WHEELS   a folder with imaginghub's wheel (and, offline, every dependency's)
#   TORCH    the torch requirement: torch==X (CPU) or torch==X+cu124 with
#            PIP_EXTRA_INDEX_URL naming PyTorch's CUDA index (the GPU image)
set -eu
: "${WHEELS:=/tmp/wheels}" "${TORCH:?TORCH must name the torch requirement, e.g. torch==2.13.0}"
VENV=/opt/imaginghub/venv
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Python, certificates for the site's HTTPS, tini to reap the kernels' children
apt-get install -y -qq --no-install-recommends python3 python3-venv ca-certificates tini \
    libgomp1 >/dev/null
# the account users' servers, jobs and Dask workers run as (uid 1000)
id jovyan >/dev/null 2>&1 || useradd --uid 1000 --create-home --home-dir /home/jovyan \
    --shell /bin/bash jovyan
python3 -m venv "$VENV"
PIP="$VENV/bin/pip --disable-pip-version-check --no-cache-dir --quiet"
$PIP install "$TORCH"
# JupyterLab and jupyterhub-singleuser (the hub extra), the kernel, deep learning
$PIP install --find-links "$WHEELS" "imaginghub[hub,kernel,ml]"
# the imaging kernelspec and JupyterLab's settings (nothing fetched at run time)
"$VENV/bin/imaginghub" kernelspec --prefix "$VENV" >/dev/null
"$VENV/bin/python" -c "from pathlib import Path; from imaginghub.hub.servers import \
write_lab_settings; write_lab_settings(Path('$VENV/share/jupyter'))"
apt-get clean
rm -rf /var/lib/apt/lists/* /root/.cache
