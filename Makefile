# Two commands on a fresh machine:
#   make run    set up .venv and run the main job: train a tiny GPT on 8 ranks on the stdlib corpus
#   make test   set up .venv and run the whole test suite (what CI runs, via .ci/run)
# On a cluster with its own MPI: make run EXTRAS=test MPIEXEC=mpiexec
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch lies on these machines; an unpinned torch pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= mpich,test,tensorboard
MPIEXEC ?= $(VENV)/bin/mpiexec
RANKS ?= 8
STEPS ?= 300

.PHONY: setup run test lessons bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q numpy "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

setup: $(VENV)/.installed

run: setup
	$(MPIEXEC) -n $(RANKS) $(PY) -m parallel_lm.train --preset tiny --steps $(STEPS) --eval-every 100 --out runs/quickstart --trace

test: setup
	PARALLEL_LM_MPIEXEC=$(MPIEXEC) $(PY) -m pytest -q

lessons: setup
	for f in lessons/[0-9][0-9]_*.py; do $(MPIEXEC) -n 4 $(PY) $$f || exit 1; done

bench: setup
	$(MPIEXEC) -n 4 $(PY) -m parallel_lm.bench -b 4K -e 64M -f 4 --json bench-p4.json

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
