# The virtual environment lives outside the project folder on purpose: flwr 1.10's
# flower-client-app re-imports every module under the project folder before each
# message, and a .venv inside it would be re-imported too (and crash the client).
VENV ?= $(HOME)/.venvs/flower-custom-mods
PYTHON := $(VENV)/bin/python
ROUNDS ?= 3
CRYPTOGRAPHY := 50.0.2
# Empty: the app's default (see config.py). Else a hub id or a local folder.
DATASET ?=

.PHONY: run test test-fast setup audit

run: $(VENV)/.installed  ## set up, then run a local federation (SuperLink, 2 clients, server)
	PATH="$(VENV)/bin:$$PATH" $(PYTHON) launch.py --rounds $(ROUNDS) $(if $(DATASET),--dataset "$(DATASET)")

test: $(VENV)/.installed  ## set up, then run every test, the slow end-to-end ones included
	PATH="$(VENV)/bin:$$PATH" $(PYTHON) -m pytest -m "slow or not slow" --durations=10 tests/

test-fast: $(VENV)/.installed  ## set up, then run the fast tests only
	PATH="$(VENV)/bin:$$PATH" $(PYTHON) -m pytest tests/

setup: $(VENV)/.installed

audit: $(VENV)/.installed  ## check the requirements, then all that is installed, against published advisories (needs network)
	$(PYTHON) -m pip install --quiet pip-audit
	$(VENV)/bin/pip-audit --requirement requirements.txt --no-deps --disable-pip
	$(VENV)/bin/pip-audit  # the environment: dependencies of dependencies, and cryptography $(CRYPTOGRAPHY)

$(VENV)/.installed: requirements.txt requirements-test.txt Makefile
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements-test.txt
	@# flwr 1.10 caps cryptography below 43, whose bundled OpenSSL has published advisories.
	@# flwr 1.10 works with a current one (the TLS and authentication tests prove it), so it
	@# goes in over the cap; pip warns about the conflict, which is expected.
	$(PYTHON) -m pip install --quiet "cryptography==$(CRYPTOGRAPHY)"
	touch $@
