"""The package's structure as docs/architecture.md states it: imports point downward, comm/ knows nothing above
itself, a flag is declared once, and the architecture document names only files that exist."""
import ast
import re
from dataclasses import fields
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "parallel_lm"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str) -> set[str]:
    """The package's modules that module ``name`` imports (at any depth of its code). ``from . import x`` names
    the submodule x, not the package that holds it (importing a submodule runs its package first anyway)."""
    path = MODULES[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in MODULES}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module
            subs = {f"{base}.{a.name}" for a in node.names} & MODULES.keys()
            found |= subs or ({base} & MODULES.keys())
    return found - {name}


def cycles() -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    graph = {name: imports(name) for name in MODULES}
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    assert cycles() == []


def test_the_cycle_finder_sees_a_cycle(monkeypatch):
    """The check above can fail: two modules importing each other are found."""
    monkeypatch.setitem(MODULES, "parallel_lm.fake_a", None)
    monkeypatch.setitem(MODULES, "parallel_lm.fake_b", None)
    fake = {"parallel_lm.fake_a": {"parallel_lm.fake_b"}, "parallel_lm.fake_b": {"parallel_lm.fake_a"}}
    monkeypatch.setattr(__import__(__name__), "imports", lambda name: fake.get(name, set()))
    assert cycles() == [["parallel_lm.fake_a", "parallel_lm.fake_b"]]


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("parallel_lm.comm")))
def test_comm_imports_nothing_above_itself(name):
    above = {m for m in imports(name) if not m.startswith("parallel_lm.comm")}
    assert not above, f"{name} imports {above}: comm/ knows nothing of the layers above it"


def test_a_flag_is_declared_once_and_no_flags_mean_the_config_defaults():
    """Parsing no flags and resolving them gives TrainConfig's own defaults, on the tiny preset: no second copy of
    a default anywhere; and every field of the run's description is a flag."""
    from parallel_lm.config import LAYOUT_FIELDS, TrainConfig, flag_fields
    from parallel_lm.model import PRESETS
    from parallel_lm.train import main, resolve_config
    from parallel_lm.train_flags import ModelFlags, RunOptions, split
    ctx = main.make_context("train", [])
    model, values, opts = split(ctx.params)
    assert resolve_config(set(), model, values, None) == TrainConfig(model=PRESETS["tiny"])
    assert model == ModelFlags() and opts == RunOptions()
    assert {f.name for f in flag_fields(TrainConfig)} == {f.name for f in fields(TrainConfig)} - {"model"}
    assert set(LAYOUT_FIELDS) == {"dp", "tp", "pp", "zero", "virtual_stages", "recompute", "ep", "sequence_parallel",
                                  "cp"}


def test_the_architecture_document_names_only_files_that_exist():
    text = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`((?:parallel_lm|tests|lessons|benchmarks|docs)/[\w/.]+\.(?:py|md))`", text))
    assert len(named) >= 20, named
    missing = sorted(n for n in named if not (ROOT / n).exists())
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"


def environment_reads(source: str) -> list[int]:
    """Lines of ``source`` that read the process environment (``os.environ``, ``os.getenv``, ``Path.home()``),
    except handing it whole to a child process (``dict(os.environ, ...)``)."""
    tree = ast.parse(source)
    handed_on = {id(node.args[0]) for node in ast.walk(tree) if isinstance(node, ast.Call)
                 and isinstance(node.func, ast.Name) and node.func.id == "dict" and node.args}
    return sorted(node.lineno for node in ast.walk(tree) if isinstance(node, ast.Attribute) and id(node) not in handed_on
            and isinstance(node.value, ast.Name) and (node.value.id, node.attr) in
            {("os", "environ"), ("os", "getenv"), ("Path", "home")})


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n != "parallel_lm.environment"))
def test_only_the_environment_module_reads_the_environment(name):
    """environment.py reads every variable once, at the entry point; no module below it reads one."""
    lines = environment_reads(MODULES[name].read_text())
    assert not lines, f"{name} reads the environment at line(s) {lines}: read it in parallel_lm/environment.py"


def test_the_environment_reader_finder_sees_a_read():
    source = "import os\nA = os.environ.get('X')\nB = os.getenv('Y')\nC = dict(os.environ, Z='1')\nD = Path.home()\n"
    assert environment_reads(source) == [2, 3, 5]


def calls(source: str) -> set[str]:
    """Names of the functions and methods ``source`` calls (``f(...)`` and ``x.f(...)``), but not those it defines."""
    found, defined = set(), set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            found.add(func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", ""))
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            defined.add(node.name)
    return found - defined


BUILDING = {"shard_model", "Stage", "Pipeline", "make_grad_sync", "make_optimizer", "ContextParallel", "ExpertParallel"}
LOOPING = {"train_step", "MetricsWriter", "write_chrome_trace", "watchdog", "validation_line"}  # what a loop does


def test_one_builder_assembles_the_parts_and_one_loop_steps_them():
    """parallelize.py alone builds a run's parts; train_loop.py alone steps a step implementation (Trainer or the
    parameter server's PSRun): the loop, its records, evaluations, checkpoints and recovery exist once."""
    builders = sorted(n for n, p in MODULES.items() if calls(p.read_text()) & BUILDING)
    assert builders == ["parallel_lm.training.parallelize"], builders
    loops = sorted(n for n, p in MODULES.items() if calls(p.read_text()) & LOOPING)
    assert loops == ["parallel_lm.training.train_loop"], loops


def test_the_call_finder_sees_calls():
    assert calls("a = f(1)\nb.g(2)\nh\ndef k():\n    return k()\n") == {"f", "g"}


def test_training_and_the_predictor_refuse_a_model_cut_with_the_same_words():
    """One list of how a model cannot be cut (costmodel/layout.py's cut_problems) behind both commands' checks."""
    from parallel_lm.config import TrainConfig
    from parallel_lm.config_checks import validate
    from parallel_lm.costmodel.layout import Layout
    from parallel_lm.costmodel.transformer import ModelShape
    from parallel_lm.model import GPTConfig
    for model, layout in (({"n_head": 6, "n_embd": 60}, {"tp": 4}), ({"n_layer": 3}, {"pp": 2}),
                          ({"n_layer": 4}, {"pp": 2, "virtual_stages": 4}), ({}, {"sequence_parallel": True})):
        cfg = TrainConfig(model=GPTConfig(**{"n_layer": 4, "n_head": 4, "n_embd": 64, **model}), global_batch_size=8,
                          micro_batches=4 if layout.get("pp") else None, **layout)
        ranks = layout.get("tp", 1) * layout.get("pp", 1)
        with pytest.raises(ValueError) as refused:
            validate(cfg, ranks)
        m = cfg.model
        shape = ModelShape(m.n_layer, m.n_embd, m.n_head, m.block_size, m.vocab_size)
        predicted = Layout(global_batch=8, micro_batch=2, **layout).problems(shape)
        assert str(refused.value) in predicted, (str(refused.value), predicted)


@pytest.mark.parametrize("model,layout,ranks,words", [
    ({"block_size": 12}, {"cp": 4}, 4, ("--block-size", "--seq-len")),  # 12 tokens do not cut into 2 x 4 chunks
    ({"n_experts": 4}, {"ep": 3}, 3, (" rank", " GPU")),  # 4 experts over 3 ranks
    ({"n_experts": 6}, {"ep": 3, "dp": 2}, 2, (" rank", " GPU")),  # ep 3 over 2 replicas
])
def test_training_and_the_predictor_refuse_sequences_and_experts_with_the_same_words(model, layout, ranks, words):
    """context_problems and expert_problems (costmodel/layout.py) behind both commands, each in its own flags."""
    from parallel_lm.config import TrainConfig
    from parallel_lm.config_checks import validate
    from parallel_lm.costmodel.layout import Layout
    from parallel_lm.costmodel.transformer import ModelShape
    from parallel_lm.model import GPTConfig
    cfg = TrainConfig(model=GPTConfig(**{"n_layer": 2, "n_head": 4, "n_embd": 64, **model}), global_batch_size=12,
                      **{k: v for k, v in layout.items() if k != "dp"})
    with pytest.raises(ValueError) as refused:
        validate(cfg, ranks)
    m = cfg.model
    shape = ModelShape(m.n_layer, m.n_embd, m.n_head, m.block_size, m.vocab_size, n_experts=m.n_experts)
    gpus = layout.get("dp", 1) * layout.get("cp", 1)
    predicted = Layout(global_batch=12, micro_batch=1, dp=layout.get("dp", 1), cp=layout.get("cp", 1),
                       ep=layout.get("ep", 1)).problems(shape, gpus)
    assert str(refused.value).replace(*words) in predicted, (str(refused.value), predicted)
