"""environment.py: each variable read into the setting it names, a bad value refused with its name, and apply()
putting the settings in force for comm/ and the fault injector."""
from pathlib import Path

import pytest

from parallel_lm import environment
from parallel_lm import faults
from parallel_lm.comm import settings
from parallel_lm.faults import Fault


@pytest.fixture(autouse=True)
def restore():
    before = environment.current(), settings.current()
    yield
    environment.apply(before[0])
    settings.configure(before[1])


def test_nothing_set_gives_the_defaults():
    env = environment.read({"HOME": "/h"})
    assert env.comm == settings.CommSettings() and env.faults == faults.FaultPlan()
    assert (env.all_ranks, env.ulfm_requested, env.plots, env.cache) == \
        (False, False, Path("plots/lessons"), Path("/h/.cache/parallel_lm"))


def test_each_variable_reaches_its_setting():
    env = environment.read({
        "PARALLEL_LM_CHECK": "1", "PARALLEL_LM_TRACE": "yes", "PARALLEL_LM_DEVICE": " CUDA ",
        "PARALLEL_LM_CUDA_AWARE": "0", "PARALLEL_LM_RANKS_PER_NODE": "2", "PARALLEL_LM_RAILS": "1",
        "MASTER_ADDR": "198.18.0.1", "PARALLEL_LM_ALL_RANKS": "1", "PARALLEL_LM_PLOTS": "/p",
        "OMPI_MCA_mpi_ft_enable": "1", "HOME": "/h",
        "PARALLEL_LM_FAIL_AT": "1:2,0:5:killwrite", "PARALLEL_LM_FAIL_ONCE": "/tmp/x",
    })
    assert env.comm == settings.CommSettings(check=True, trace=True, device="cuda", cuda_aware=False,
                                             ranks_per_node=2, rails=1, rendezvous_host="198.18.0.1")
    assert env.faults == faults.FaultPlan((Fault(1, 2, "raise"), Fault(0, 5, "killwrite")), "/tmp/x", None)
    assert (env.all_ranks, env.ulfm_requested, env.plots) == (True, True, Path("/p"))
    assert environment.read({"PARALLEL_LM_CHECK": "0", "PARALLEL_LM_TRACE": ""}).comm == settings.CommSettings()


@pytest.mark.parametrize("variables, message", [
    ({"PARALLEL_LM_DEVICE": "tpu"}, "PARALLEL_LM_DEVICE='tpu': use 'cpu' or 'cuda'"),
    ({"PARALLEL_LM_RANKS_PER_NODE": "0"}, "PARALLEL_LM_RANKS_PER_NODE='0' must be a positive whole number"),
    ({"PARALLEL_LM_RAILS": "two"}, "PARALLEL_LM_RAILS='two' must be a positive whole number"),
    ({"PARALLEL_LM_FAIL_AT": "1:x"}, "each fault is RANK:STEP[:HOW]"),
    ({"PARALLEL_LM_FAIL_AT": "1:2:explode"}, "'1:2:explode' is not"),
    ({"PARALLEL_LM_FAIL_AT": "1:2:corrupt"}, "set PARALLEL_LM_CORRUPT"),
])
def test_a_bad_value_is_refused_by_name(variables, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        environment.read(variables)


def test_apply_puts_the_settings_in_force():
    env = environment.read({"PARALLEL_LM_TRACE": "1", "PARALLEL_LM_RANKS_PER_NODE": "3",
                            "PARALLEL_LM_FAIL_AT": "0:1:killcomm"})
    environment.apply(env)
    assert settings.current().trace and settings.current().ranks_per_node == 3
    assert environment.current() is env
    comm = object()
    assert faults.in_collectives(comm) is not comm  # killcomm armed: the communicator is wrapped
    environment.apply(environment.read({}))
    assert faults.in_collectives(comm) is comm and not settings.current().trace
