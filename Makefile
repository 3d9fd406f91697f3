# `make test` and `make demo` set everything up themselves (scripts/setup.sh): the .venv, the
# local PostgreSQL and Redis, the Fashion-MNIST images.

.PHONY: test demo venv lint

VENV := .venv

# Two test processes, whole files each (a file's module fixtures start one stack, not two): the
# tests start API, worker, PostgreSQL and Redis processes of their own, and their timeouts were
# written for a host running two at once, not more. TEST_PROCESSES=0 runs all in one process.
TEST_PROCESSES ?= 2

test:
	scripts/setup.sh
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -q -n $(TEST_PROCESSES) --dist loadfile $(PYTEST_ARGS)

demo:
	scripts/setup.sh
	$(VENV)/bin/nst demo

venv:
	scripts/setup.sh venv

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
