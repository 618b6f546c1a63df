# The two commands: `make serve` and `make test`. Everything else is a helper of those.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
STATE_DIR ?= .inferd
DEMO_REPO ?= $(STATE_DIR)/demo-models
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001

.PHONY: serve test lint unit bench install native demo clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP) native

# The request path's modules compiled in place with mypyc (inferd/native.py); a no-op when current, plain
# Python when no compiler works.
native: $(STAMP)
	$(BIN)/python -m inferd.native build

demo: $(STAMP) native
	$(BIN)/python -m inferd.demo $(DEMO_REPO)

serve: demo
	$(BIN)/inferd serve --model-repository $(DEMO_REPO) --state-dir $(STATE_DIR) \
		--http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy inferd

unit: $(STAMP) native
	$(BIN)/python -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

test: lint unit

bench: $(STAMP) native
	$(BIN)/python benchmarks/v2_serving.py

clean:
	test ! -x $(BIN)/python || $(BIN)/python -m inferd.native clean
	rm -rf $(VENV) $(STATE_DIR) build
