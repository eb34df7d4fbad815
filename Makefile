# Two commands do everything on a fresh machine:
#   make run    set up, then run the main job (the pipeline on the default world)
#   make test   set up, then run the whole test suite
.PHONY: setup run test bench clean-world

setup:
	bash scripts/setup.sh

run: setup
	.venv/bin/avs pipeline

test: setup
	.venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python benchmarks/bench_world.py

clean-world:
	rm -rf data/default_world
