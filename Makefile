# edgefed: two commands on a fresh Debian 12 machine (as root):
#   make demo   a local fleet (mosquitto, registry, cloudcore, 3 edge agents, real crun)
#   make test   lint, layer contracts and every test
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-8)
# what the edge runtime and the testbed run for real
APT_PACKAGES := mosquitto crun skopeo umoci docker-registry busybox-static conmon iproute2 \
                nats-server util-linux tmux tcpdump nftables chromium gcc
DEMO_NODES ?= 3
DEMO_DURATION ?=

.PHONY: all deps system-deps demo test lint unit bench clean

all: test

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "need root to apt-get install:$$missing" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP):
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-*; touch $(STAMP)

deps: system-deps $(STAMP)

demo: deps
	DEMO_DURATION=$(DEMO_DURATION) $(VENV)/bin/testbed demo --nodes $(DEMO_NODES)

lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy --strict shared/

test: lint
	$(PY) -m pytest -q -p no:cacheprovider --durations=15

bench: deps
	$(VENV)/bin/testbed bench sync --nodes 5000
	$(VENV)/bin/testbed bench rollout --nodes 5000

clean:
	rm -rf $(VENV) var build *.egg-info
