# The README's two commands: `make run` (set up + the local pipeline on full MNIST) and
# `make test` (set up + the test suite). Both start with the same idempotent bootstrap.
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
RUN_ARGS ?=

.PHONY: bootstrap run test test-fast lint bench-training bench-executor bench-endpoint bench-forward bench-memory bench-bluegreen bench-pipeline bench-epoch clean

bootstrap:
	@./scripts/bootstrap.sh

run: bootstrap
	$(BIN)/mlops run $(RUN_ARGS)

test: bootstrap
	$(BIN)/ruff check .
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: bootstrap
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

lint: bootstrap
	$(BIN)/ruff check .

bench-training: bootstrap
	$(BIN)/python benchmarks/bench_training.py

bench-executor: bootstrap
	$(BIN)/python benchmarks/bench_executor.py

bench-endpoint: bootstrap
	$(BIN)/python benchmarks/bench_endpoint.py

bench-forward: bootstrap
	$(BIN)/python benchmarks/bench_forward.py

bench-memory: bootstrap
	$(BIN)/python benchmarks/bench_memory.py

bench-bluegreen: bootstrap
	$(BIN)/python benchmarks/bench_bluegreen.py

bench-pipeline: bootstrap
	$(BIN)/python benchmarks/bench_pipeline.py

bench-epoch: bootstrap
	$(BIN)/python benchmarks/bench_epoch.py

clean:
	rm -rf .mlops .pytest_cache
