# imaginghub: `make up` runs the workspace, `make test` runs every test.
# Both set up what they need first (a venv, the archive from Debian packages)
# and are fast when it is already there.
#
# As root, `make up` runs a multi-user site: every user's code runs as their
# own Unix account, so what their processes run must be readable by them.
# The checkout may sit in a private place (/root) and pyenv's interpreters
# live there too, so root gets Debian's Python, a venv in /opt/imaginghub
# and the code installed into it (not editable; reinstalled when a source
# file changes). An ordinary user (a laptop) gets an editable .venv here.

SHELL := /bin/bash
AS_ROOT := $(shell [ "$$(id -u)" = 0 ] && echo yes)
ifeq ($(AS_ROOT),yes)
PYTHON ?= /usr/bin/python3
VENV ?= /opt/imaginghub/venv
EDITABLE :=
SUDO :=
else
PYTHON ?= python3
VENV ?= .venv
EDITABLE := -e
SUDO := sudo
endif
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CODE_STAMP := $(VENV)/.code-installed
EXTRAS ?= hub,kernel,ml,k8s,dev
ORTHANC := /usr/sbin/Orthanc
PLUGINS := /usr/share/orthanc/plugins
APT_PACKAGES := orthanc orthanc-dicomweb nftables
PIP := $(VENV)/bin/pip --disable-pip-version-check
# The browser viewer's app (OHIF, built, from the npm registry; pinned in pyproject.toml)
VIEWER_APP := $(VENV)/share/imaginghub/ohif
VIEWER_STAMP := $(VIEWER_APP)/.imaginghub-app.json
# A real Kubernetes API server for the chart's tests (etcd, kube-apiserver and
# kube-controller-manager 1.20 built from Debian's sources; no kubelet), and
# helm and kubectl, cached outside the checkout: built once (about 4 minutes,
# 1.9 GB), then nothing. CLEAN_BUILD=1 keeps only the binaries (131 MB).
K8S_CACHE ?= /var/cache/imaginghub-k8s
K8S_BIN := $(K8S_CACHE)/bin
SOURCES := $(shell find hub kernels widgets notebooks -type f -not -path '*/__pycache__/*' 2>/dev/null)

.PHONY: up test test-fast setup system-deps test-deps control-plane images apt-install bench clean

up: setup
	$(VENV)/bin/imaginghub up --demo

test: setup test-deps
	$(PY) -m pytest $(PYTEST_ARGS)

# The tests that start no service (no archive, stack, PostgreSQL or browser):
# configuration, parameters, the queue, decoding, geometry, widget logic.
test-fast: setup
	$(PY) -m pytest -m "not stack" -q $(PYTEST_ARGS)

setup: system-deps $(STAMP) $(CODE_STAMP) $(VIEWER_STAMP)

# The project's dependencies in a venv. Reinstalled when pyproject.toml changes.
$(STAMP): pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip' 2>/dev/null \
	  || $(MAKE) --no-print-directory apt-install PKGS=python3-venv
	$(PYTHON) -m venv $(VENV)
	@# torch first and pinned, so that pip takes the CPU build (see docs/dependencies.md)
	$(PIP) install --quiet "$$(grep -o 'torch==[0-9.]*' pyproject.toml)"
	$(PIP) install --quiet $(EDITABLE) '.[$(EXTRAS)]'
	touch $(STAMP)

# The code itself: editable for an ordinary user (nothing to do), installed
# into the venv for root, again whenever a source file changed.
$(CODE_STAMP): $(STAMP) $(SOURCES)
ifeq ($(EDITABLE),)
	$(PIP) install --quiet --no-deps --no-build-isolation --force-reinstall .
	@rm -rf build imaginghub.egg-info
endif
	touch $(CODE_STAMP)

# The OHIF viewer app: `npm pack` of the version pinned in pyproject.toml, its
# SHA-512 checked, its dist/ unpacked as it is (never changed: the viewer
# service configures it). npm is needed for this step only.
$(VIEWER_STAMP): pyproject.toml $(CODE_STAMP)
	@command -v npm >/dev/null 2>&1 || $(MAKE) --no-print-directory apt-install PKGS=npm
	$(PY) -m imaginghub.hub.services.viewer.install pyproject.toml $(VIEWER_APP)
	@touch $@

# The archive: Orthanc with its DICOMweb plugin, and nftables, which closes
# the archive's ports to users' processes, from Debian's packages.
system-deps:
	@if [ ! -x $(ORTHANC) ] || [ ! -f $(PLUGINS)/libOrthancDicomWeb.so ] \
	    || ! command -v nft >/dev/null 2>&1; then \
	  $(MAKE) --no-print-directory apt-install PKGS="$(APT_PACKAGES)" && \
	  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then \
	    echo "The orthanc package starts its own service; imaginghub runs its own archive, so it is disabled."; \
	    $(SUDO) systemctl disable --now orthanc || true; \
	  fi; \
	fi

# What only the tests need: PostgreSQL, to run the data service on it, and
# Chromium, to look at the widgets in JupyterLab.
test-deps:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  $(MAKE) --no-print-directory apt-install PKGS=postgresql
	@[ -x /usr/bin/chromium ] || $(MAKE) --no-print-directory apt-install PKGS=chromium
	@$(MAKE) --no-print-directory control-plane

# The control plane and the tools; the tests find them in $(K8S_CACHE)
# (IMAGINGHUB_K8S_CACHE for a cache elsewhere).
control-plane: $(K8S_BIN)/kube-apiserver $(K8S_BIN)/.kube-tools

$(K8S_BIN)/kube-apiserver: tests/k8s/build-control-plane.sh
	@command -v openssl >/dev/null 2>&1 || $(MAKE) --no-print-directory apt-install PKGS=openssl
	$(SUDO) tests/k8s/build-control-plane.sh $(K8S_CACHE)
	@$(SUDO) touch $@

$(K8S_BIN)/.kube-tools: pyproject.toml tests/k8s/kube_tools.py $(STAMP)
	$(SUDO) $(PY) tests/k8s/kube_tools.py pyproject.toml $(K8S_CACHE)
	@$(SUDO) touch $@

# The chart's images as root file systems without Docker (mmdebstrap, runc),
# each checked in runc: the user image runs `imaginghub --help` and the
# imaging kernel; the hub image runs PostgreSQL and Orthanc on it with the
# chart's configuration (docker/check-hub.py). Not part of `make test`.
# `make images IMAGES=hub` builds one. The Dockerfiles a site builds with
# are in docker/.
IMAGES_DIR ?= /var/cache/imaginghub-images
IMAGES ?= user hub
images: setup
	@command -v mmdebstrap >/dev/null 2>&1 && command -v runc >/dev/null 2>&1 \
	  || $(MAKE) --no-print-directory apt-install PKGS="mmdebstrap runc"
	$(SUDO) docker/build-rootfs.sh $(IMAGES_DIR) $(PY) $(IMAGES)

apt-install:
	@if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "imaginghub needs these Debian/Ubuntu packages: $(PKGS)"; \
	  echo "This system has no apt-get: install them (or their equivalents) by hand and run make again."; \
	  exit 1; \
	fi
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(PKGS)

bench: setup
	$(PY) bench/load_series.py
	$(PY) bench/kernel_start.py
	$(PY) bench/gateway_overhead.py
	$(PY) bench/gateway_overhead.py --site-archive
	$(PY) bench/catalog.py
	$(PY) bench/dask_map.py
	$(PY) bench/jobs.py
	$(PY) bench/spawn.py
	$(PY) bench/federation.py
	$(PY) bench/viewer.py

clean:
	rm -rf $(VENV) .pytest_cache build imaginghub.egg-info
