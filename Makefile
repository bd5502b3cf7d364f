# The two commands of the README:
#   make run    the embedded stack on 127.0.0.1 (local SQS, the daemon, a demo batch)
#   make test   the whole test suite
# Each creates .venv and installs what it needs first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Never reach AWS or the EC2 metadata address from a dev or test run.
export AWS_EC2_METADATA_DISABLED := true
export AWS_ACCESS_KEY_ID ?= testing
export AWS_SECRET_ACCESS_KEY ?= testing
export AWS_DEFAULT_REGION ?= us-east-1

.PHONY: run test lint bench clean systemd-analyze chromium

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/vip-worker dev $(ARGS)

test: $(STAMP) systemd-analyze chromium
	$(BIN)/python -m pytest $(ARGS)

# tests/ops verifies systemd/vip-worker.service with `systemd-analyze verify`. Install
# Debian's systemd package for it only when the tool is missing and we are root with apt
# (as in CI); otherwise that one test skips and says why.
systemd-analyze:
	@command -v systemd-analyze >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
	  ! command -v apt-get >/dev/null 2>&1 || \
	  { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install \
	    -y -qq --no-install-recommends systemd >/dev/null; } || \
	  echo "warning: could not install systemd; the unit's verify test will skip" >&2

# tests/browser drives Debian's Chromium through Playwright (never Playwright's own browser
# download). Install the package the same way, only when it is missing and we are root with
# apt; otherwise the browser tests skip and say why.
chromium:
	@[ -x /usr/bin/chromium ] || [ "$$(id -u)" != 0 ] || \
	  ! command -v apt-get >/dev/null 2>&1 || \
	  { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install \
	    -y -qq --no-install-recommends chromium >/dev/null; } || \
	  echo "warning: could not install chromium; the browser tests will skip" >&2

lint: $(STAMP)
	$(BIN)/ruff check .

# Benchmarks (docs/benchmarks.md): ARGS=--quick for two to four minutes (the full run: 11-14).
bench: $(STAMP)
	$(BIN)/python -m bench.run $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info daemon/*.egg-info
