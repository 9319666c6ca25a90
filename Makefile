# var_keeper: `make run` serves on port 5000 with the embedded SQLite default; `make test` runs
# every check. Both create .venv and install the pinned dependencies first.
VENV ?= .venv
WAPITI_VENV ?= .venv-wapiti
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: run test lint format clean docker-build docker-run system-deps

$(VENV)/.runtime: requirement.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirement.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirement-dev.txt
	$(PY) -m pip install --quiet -r requirement-dev.txt
	touch $@

run: $(VENV)/.runtime
	$(PY) app.py

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/hadolint Dockerfile
	$(VENV)/bin/actionlint .github/workflows/*.yml

test: $(VENV)/.dev $(WAPITI_VENV)/.installed system-deps lint
	WAPITI=$(CURDIR)/$(WAPITI_VENV)/bin/wapiti $(VENV)/bin/pytest

# wapiti3, the web scanner tests/test_signin_gunicorn.py runs against the page, in a venv of its
# own (WAPITI_VENV): its last release for Python 3.11 (3.2.3) pins Flask < 3.1 through
# mitmproxy, which the service's venv cannot hold.
$(WAPITI_VENV)/.installed:
	$(PYTHON) -m venv $(WAPITI_VENV)
	$(WAPITI_VENV)/bin/pip install --quiet --upgrade pip
	$(WAPITI_VENV)/bin/pip install --quiet wapiti3==3.2.3
	touch $@

# Debian packages the tests start themselves: a private mariadbd, Galera, Chromium, wrk; and
# what the README's examples run (curl, jq: tests/test_readme.py).
# Installed when missing and we may (root with apt-get); otherwise named, and the tests that
# need them say so.
PACKAGES ?= mariadb-server mariadb-client wrk chromium chromium-driver galera-4 rsync curl jq
system-deps:
	@missing=""; for pkg in $(PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q "install ok installed" \
	    || missing="$$missing $$pkg"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends $$missing; \
	else \
	  echo "missing Debian packages (install them for the full suite):$$missing"; \
	fi

# Mutation testing ([tool.mutmut] in pyproject.toml): mutmut changes the code where a bug costs
# most, one small change at a time, and runs the fast tests (SQLite) that reach it; a change no
# test notices is a survivor. Not in CI: it takes about an hour on 2 cores. Then
# `$(VENV)/bin/mutmut results` lists the survivors, `$(VENV)/bin/mutmut show NAME` one of them.
.PHONY: mutation
mutation: $(VENV)/.dev
	rm -rf mutants
	$(VENV)/bin/mutmut run --max-children 2
	$(VENV)/bin/mutmut export-cicd-stats
	cat mutants/mutmut-cicd-stats.json

format: $(VENV)/.dev
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The image as the README's "Run with Docker" uses it. On this repo's CI sandbox, add
# DOCKER_NETWORK=--network=host (see ../shared/container-engine/README.md).
IMAGE ?= varkeeper/var_keeper
DOCKER_NETWORK ?=

docker-build:
	docker build $(DOCKER_NETWORK) -t $(IMAGE) .

docker-run: docker-build
	docker run --rm -p 5000:5000 -v var_keeper-data:/app/instance $(DOCKER_NETWORK) $(IMAGE)

# The benchmark (bench/run.py): starts a private MariaDB, gunicorn, webdis and etcd on 127.0.0.1,
# measures in one run (about 13 minutes) and writes bench/results/. bench-smoke is CI's few
# seconds of it, so that it cannot rot; it asserts no timing.
.PHONY: bench bench-smoke bench-deps
BENCH_PACKAGES := wrk mariadb-server mariadb-client redis-server webdis etcd-server

$(VENV)/.bench: $(VENV)/.runtime bench/requirements.txt
	$(PY) -m pip install --quiet -r bench/requirements.txt
	touch $@

bench-deps:
	@$(MAKE) --no-print-directory system-deps PACKAGES="$(BENCH_PACKAGES)"

bench: $(VENV)/.bench bench-deps
	$(PY) -m bench.run

bench-smoke: $(VENV)/.runtime
	$(PY) -m bench.run --smoke

# The soak (bench/soak.py): two instances on a private MariaDB under a mixed load, the database
# restarted every few minutes; writes bench/results/soak.md and soak.json, fails on a verdict.
# SOAK_SECONDS sets its length; tests/test_soak.py is CI's 30 seconds of it.
.PHONY: soak
SOAK_SECONDS ?= 600
soak: $(VENV)/.bench bench-deps
	SOAK_SECONDS=$(SOAK_SECONDS) $(PY) -m bench.soak

clean:
	rm -rf $(VENV) $(WAPITI_VENV) .pytest_cache .ruff_cache .hypothesis instance
