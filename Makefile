PY ?= .venv/bin/python

.PHONY: setup protos test lint typecheck demo bench

setup:
	bash scripts/setup.sh

protos:
	$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. protos/cbir.proto

test:
	bash scripts/test.sh

lint:
	$(PY) -m ruff check .

typecheck:
	$(PY) -m mypy cbir jobs shard_server coordinator bench deploy demo web

demo:
	bash scripts/demo.sh

bench:
	$(PY) -m bench all --quick
