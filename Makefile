# One-line targets; `make up` and `make test` install what is missing first.
UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)
PYTEST_ARGS ?=
# Weights for `make up`: random (offline, meaningless vectors) | pretrained (downloads once).
WEIGHTS ?= random

.PHONY: bootstrap up test faults test-unit lint fmt typecheck bench bench-pipeline bench-cache bench-scale soak compose-check asyncapi images images-smoke

bootstrap:
	bash infra/local/bootstrap.sh

up: bootstrap
	$(UV) run imgsim-devstack up --weights $(WEIGHTS)

test: bootstrap
	$(UV) run pytest $(PYTEST_ARGS)

faults: bootstrap
	$(UV) run pytest -m faults $(PYTEST_ARGS)

test-unit: bootstrap
	$(UV) run pytest -m "not integration and not e2e" $(PYTEST_ARGS)

lint:
	$(UV) run ruff check . && $(UV) run ruff format --check .

fmt:
	$(UV) run ruff check --fix . && $(UV) run ruff format .

typecheck:
	$(UV) run mypy libs/core/src libs/devstack/src services/gateway/src services/indexer/src services/embedder/src cli/src tests libs/core/tests services/gateway/tests services/indexer/tests services/embedder/tests cli/tests

bench: bootstrap
	$(UV) run python bench/bench.py $(BENCH_ARGS)

bench-pipeline:
	$(UV) run python bench/pipeline.py

# The three service images with buildah (no Docker engine needed), then a smoke run of
# each against a local Kafka and Redis. IMAGE_BASE=public uses the Dockerfile's registry bases.
images:
	bash infra/images/build.sh

images-smoke:
	$(UV) run python infra/images/smoke.py --tag $${IMAGE_TAG:-dev}

compose-check:
	docker-compose -f compose.yaml config -q

asyncapi:
	$(UV) run python -m imgsim_core.asyncapi > docs/asyncapi.json

soak: bootstrap
	$(UV) run python bench/soak.py $(SOAK_ARGS)

bench-cache:
	$(UV) run python bench/cache.py

# 1M vectors through the vectors topic into the embedded store (SCALE_ARGS="--points 50000
# --steps 25000,50000 --queries 200" for a quick run; --quantization int8).
bench-scale: bootstrap
	$(UV) run python bench/scale.py $(SCALE_ARGS)
