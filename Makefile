# imaginghub: `make up` runs the workspace, `make test` runs every test.
# Both set up what they need first (a venv in .venv, the archive from Debian
# packages) and are fast when it is already there.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS ?= hub,kernel,ml,dev
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
ORTHANC := /usr/sbin/Orthanc
DICOMWEB_PLUGIN := /usr/share/orthanc/plugins/libOrthancDicomWeb.so
APT_PACKAGES := orthanc orthanc-dicomweb

.PHONY: up test setup system-deps test-deps apt-install bench clean

up: setup
	$(VENV)/bin/imaginghub up --demo

test: setup test-deps
	$(PY) -m pytest $(PYTEST_ARGS)

setup: system-deps $(STAMP)

# The project in a venv. Reinstalled when pyproject.toml changes.
$(STAMP): pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip' 2>/dev/null \
	  || $(MAKE) --no-print-directory apt-install PKGS=python3-venv
	$(PYTHON) -m venv $(VENV)
	@# torch first and pinned, so that pip takes the CPU build (see docs/dependencies.md)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check "$$(grep -o 'torch==[0-9.]*' pyproject.toml)"
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[$(EXTRAS)]'
	touch $(STAMP)

# The archive: Orthanc and its DICOMweb plugin from Debian's packages.
system-deps:
	@if [ ! -x $(ORTHANC) ] || [ ! -f $(DICOMWEB_PLUGIN) ]; then \
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
	$(PY) bench/catalog.py
	$(PY) bench/dask_map.py
	$(PY) bench/jobs.py

clean:
	rm -rf $(VENV) .pytest_cache
