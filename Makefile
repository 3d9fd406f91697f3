# `make test` and `make demo` set everything up themselves (scripts/setup.sh): the .venv, the
# local PostgreSQL and Redis, the Fashion-MNIST images.

.PHONY: test demo venv lint

VENV := .venv

test:
	scripts/setup.sh
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

demo:
	scripts/setup.sh
	$(VENV)/bin/nst demo

venv:
	scripts/setup.sh venv

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
