# Two commands matter: `make lab` (the platform on a local throwaway host) and
# `make test` (every test). Both install what they need; run them as root.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

UV_VERSION := 0.13.9
# Debian's python3 has no pip and is externally managed (PEP 668): uv goes into a
# private venv (python3-venv brings ensurepip), never into the system Python.
HOST_PACKAGES := debootstrap systemd-container nftables rsync openssh-client iproute2 python3 python3-venv
# The multinode scenario looks at the UI in a real browser (playwright-core from npm
# drives Debian's Chromium; nothing downloads a browser of its own).
TEST_PACKAGES := chromium
# make lab TOPOLOGY=multinode: database, control and two code hosts on four hosts.
TOPOLOGY ?= single
# make lab RELEASE=bookworm: the lab's hosts run Debian 12 instead of 13 (trixie).
RELEASE ?= trixie
ifeq ($(TOPOLOGY),multinode)
LAB_INVENTORY := inventory/lab-multinode
LAB_HOSTS := dg-db=10.77.0.31 dg-control=10.77.0.32 dg-code1=10.77.0.33 dg-code2=10.77.0.34
LAB_URL := https://10.77.0.32
LAB_STANDINS_URL :=
LAB_PGADMIN :=
else
LAB_INVENTORY := inventory/lab
LAB_HOSTS := dagster-lab=10.77.0.10
LAB_URL := https://10.77.0.10
LAB_STANDINS_URL := http://10.77.0.10:8900
LAB_PGADMIN := $(LAB_URL)/pgadmin/  (user admin@example.com, password: sudo cat /var/lib/dagster-lab/secrets/pgadmin_password)
endif
LOCATIONS := $(sort $(dir $(wildcard code_locations/*/pyproject.toml)))
# The platform's own Python tools with tests of their own.
TOOL_PROJECTS := roles/dagster_metrics/files/exporter/

BOOTSTRAP := $(CURDIR)/.cache/bootstrap
UV := $(BOOTSTRAP)/bin/uv
export PATH := $(CURDIR)/.venv/bin:$(BOOTSTRAP)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
# The system CA store (where a TLS-inspecting proxy's CA is installed) for pip and uv;
# the system's Python only: uv must not fetch interpreters of its own.
export PIP_CERT ?= /etc/ssl/certs/ca-certificates.crt
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export UV_SYSTEM_CERTS ?= 1
export UV_PYTHON_DOWNLOADS := never
# The toolchain's and the locations' venvs hold no bytecode until Python writes it on
# first import: with PYTHONDONTWRITEBYTECODE set (as in this machine's shell), every
# ansible-playbook start and every `import dagster` compiled the sources again, twice
# the CPU of a warm start (ansible-playbook --version: 2.0 s of CPU, 1.1 s with bytecode).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: help host-packages toolchain lab lab-down lint test-locations locations-pytest test-packages test-molecule test bench

help:
	@echo "make lab            boot the local lab host and install the platform on it"
	@echo "                    (TOPOLOGY=multinode: db, control and two code hosts;"
	@echo "                    RELEASE=bookworm: Debian 12 hosts instead of 13)"
	@echo "make lab-down       remove every lab host, mount, bridge and nft table"
	@echo "make test           lint, the code locations' tests, the molecule scenarios"
	@echo "make bench          the deploy loop's costs on a lab host of its own, against their"
	@echo "                    targets (history: files/bench/history.jsonl)"

host-packages:
	@missing=$$(for p in $(HOST_PACKAGES) $(EXTRA_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# uv from the package index into a private venv, then the locked controller
# toolchain in .venv, on the system's python3 (3.11 on Debian 12, 3.13 on 13).
toolchain: host-packages
	@[ -x $(UV) ] && $(UV) --version | grep -q " $(UV_VERSION)" \
	  || { /usr/bin/env -u VIRTUAL_ENV python3 -m venv --clear $(BOOTSTRAP) \
	       && $(BOOTSTRAP)/bin/pip install --quiet "uv==$(UV_VERSION)"; }
	$(UV) sync --frozen --quiet

lab: toolchain
	python3 files/lab/lab.py up $(addsuffix @$(RELEASE),$(LAB_HOSTS))
	ansible-playbook -i $(LAB_INVENTORY) playbooks/lab.yml
	@echo
	@echo "Dagster UI: $(LAB_URL)  (self-signed certificate; user admin,"
	@echo "            password: sudo cat /var/lib/dagster-lab/secrets/ui_password)"
	@echo "Read-only:  the same URL as user viewer, password: sudo cat /var/lib/dagster-lab/secrets/viewer_password"
	@echo "Health:     ansible-playbook -i $(LAB_INVENTORY) playbooks/status.yml"
	@[ -z "$(LAB_PGADMIN)" ] || echo "pgAdmin:    $(LAB_PGADMIN)"
	@[ -z "$(LAB_STANDINS_URL)" ] || echo "Stand-ins for outside services: $(LAB_STANDINS_URL)  (alerts received: $(LAB_STANDINS_URL)/alerts/received;"
	@[ -z "$(LAB_STANDINS_URL)" ] || echo "            Cloud Storage: $(LAB_STANDINS_URL:8900=8901)/storage/v1/b)"
	@echo "Inside a host: python3 files/lab/lab.py shell $(firstword $(subst =, ,$(lastword $(LAB_HOSTS)))) -- systemctl status 'dagster-*'"

lab-down:
	python3 files/lab/lab.py down

lint: toolchain
	yamllint --strict .
	ansible-lint
	python3 files/test/check-locks.py
	ansible-playbook -i inventory/lab playbooks/lab.yml --syntax-check
	ansible-playbook -i inventory/lab-multinode site.yml --syntax-check

# Each location's own tests, with a throwaway PostgreSQL for those that load data.
test-locations: toolchain
	files/test/warehouse-db.sh run $(MAKE) --no-print-directory locations-pytest

# Every project runs even when one fails; the target fails if any did.
locations-pytest:
	@failed=""; for dir in $(LOCATIONS); do \
	  echo "== $$dir"; \
	  (cd $$dir && uv run --frozen --quiet pytest -q -p no:cacheprovider \
	    && uv run --frozen --quiet dagster definitions validate 2>&1 | tail -1) || failed="$$failed $$dir"; \
	done; \
	for dir in $(TOOL_PROJECTS); do \
	  echo "== $$dir"; \
	  (cd $$dir && uv run --frozen --quiet pytest -q -p no:cacheprovider) || failed="$$failed $$dir"; \
	done; \
	if [ -n "$$failed" ]; then echo "failed:$$failed"; exit 1; fi

# Two lanes side by side (2 cores: much of a converge waits on its hosts, but a third
# platform alongside made every lane slower than running it alone), each scenario's log in
# artifacts/; a failed lane prints the end of its log.
MOLECULE_LANES := default multinode,upgrade,pristine
test-molecule: toolchain test-packages
	npm ci --prefix molecule/multinode/browser --no-audit --no-fund --silent
	mkdir -p artifacts && rm -f artifacts/molecule-failed
	@pids=(); for lane in $(MOLECULE_LANES); do \
	  ( failed=0; for scenario in $${lane//,/ }; do \
	      echo "molecule: $$scenario started"; started=$$SECONDS; \
	      if COLUMNS=250 molecule test -s $$scenario >artifacts/molecule-$$scenario.log 2>&1; then \
	        echo "molecule: $$scenario passed in $$((SECONDS - started)) s"; \
	      else \
	        echo "molecule: $$scenario FAILED after $$((SECONDS - started)) s; the end of artifacts/molecule-$$scenario.log:"; \
	        tail -n 150 artifacts/molecule-$$scenario.log; files/test/molecule-failures.sh $$scenario; \
	        echo $$scenario >>artifacts/molecule-failed; failed=1; \
	      fi; \
	    done; exit $$failed ) & pids+=($$!); \
	done; \
	status=0; for pid in "$${pids[@]}"; do wait $$pid || status=1; done; \
	if [ $$status -ne 0 ]; then echo "molecule: what failed, last (CI keeps the end of the output):"; \
	  files/test/molecule-failures.sh $$(cat artifacts/molecule-failed); fi; exit $$status

# What the tests install from Debian, one apt at a time (before anything runs in parallel).
test-packages:
	$(MAKE) host-packages EXTRA_PACKAGES="$(TEST_PACKAGES)"
	command -v npm >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
	files/test/warehouse-db.sh install

# Lint first (a few minutes, fails fast); then the locations' suites beside the molecule
# lanes, whose first minutes wait on downloads and host boots more than on the CPU.
test: lint test-packages
	$(MAKE) --no-print-directory -j2 test-locations test-molecule

# The deploy loop measured on a lab host of its own (not part of `make test`).
bench: toolchain
	python3 files/bench/bench.py
