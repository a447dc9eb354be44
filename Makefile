# Warden: `make run` serves the console with workers and beat; `make test` runs the suite.
# Both set everything up first on a machine with only Python 3.11: uv, the locked
# dependencies, and (when DATABASE_URL / REDIS_URL are unset) an embedded
# PostgreSQL and Redis under ./var/.

PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo $(PYTHON) -m uv)
RUN := $(UV) run --frozen
DEVSTACK := $(RUN) python scripts/devstack.py
CHROMIUM ?= /usr/bin/chromium

.PHONY: run test bench wrk setup uv browser services services-down check clean

run: setup
	$(DEVSTACK) run

test: setup browser
	$(DEVSTACK) test $(PYTEST_ARGS)

bench: setup wrk
	$(DEVSTACK) bench $(BENCH)

setup: uv
	$(UV) sync --frozen

uv:
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || \
		$(PYTHON) -m pip install --quiet --disable-pip-version-check uv

# The browser tests drive Debian's Chromium through Playwright (a test tool's own
# browser download does not work offline); install it when it is missing.
browser:
	@if [ ! -x "$(CHROMIUM)" ]; then \
		if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing Chromium for the browser tests"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else \
			echo "Chromium is missing at $(CHROMIUM): install it (apt-get install chromium) or set CHROMIUM"; exit 1; \
		fi; \
	fi

# The HTTP benchmark drives the server with wrk (Debian's package).
wrk:
	@command -v wrk >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; \
		else echo "wrk is missing: install it (apt-get install wrk) for the HTTP benchmark"; fi; }

services: setup
	$(DEVSTACK) up

services-down:
	$(DEVSTACK) down

check: setup
	$(DEVSTACK) manage check

clean: services-down
	rm -rf var
