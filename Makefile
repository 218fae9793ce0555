# Convenience aliases for the two scripts the README documents.
.PHONY: demo test lint

demo:
	./scripts/demo.sh

test:
	./scripts/test.sh

lint:
	.venv/bin/ruff check rebalancerd && .venv/bin/mypy rebalancerd
