"""Tests run in float64 so that numbers can be compared with exact references tightly."""

import json
import os

import jax
import pytest

jax.config.update("jax_enable_x64", True)
# the CLI keeps compiled programs in ~/.cache unless told otherwise: not from the tests
os.environ.setdefault("COARSEFLOW_JAX_CACHE", "")
# Most of the suite's time is XLA compiling programs that then run for milliseconds: LLVM's
# cheapest code generation (the same XLA program, unoptimised machine code) takes about a quarter
# off the suite's CPU time. Subprocesses inherit it through the environment.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)


@pytest.fixture(scope="module")
def one_model_per_config():
    """Within a module, every run built from one config reuses one target, one flow skeleton and
    one learned conditional (workflow's build_target / build_flow / make_conditional memoised).

    A new flow's static part holds a fresh closure (flowjax's ravelled-parameter constructor)
    and a new Molecule a topology compared by identity, so each train / resume / load / sample
    of the same config in one process would compile every jitted function again. All three are
    immutable and a checkpoint's parameters replace the built ones, so reusing them changes no
    result, only the compilations (tests/test_kill_resume.py resumes across processes).
    """
    from coarseflow import workflow

    targets, flows, conditionals = {}, {}, {}
    build_target, build_flow = workflow.build_target, workflow.build_flow
    make_conditional = workflow.make_conditional

    def cached_target(table):
        key = json.dumps(table, sort_keys=True, default=repr)
        if key not in targets:
            targets[key] = build_target(table)
        return targets[key]

    def cached_flow(config, target):
        key = (id(target), repr(config.model))
        if key not in flows:
            flows[key] = (target, build_flow(config, target))  # the target kept: its id stays
        return flows[key][1]

    def cached_conditional(key, target, settings):
        k = (id(target), repr(settings), repr(jax.random.key_data(key).tolist()))
        if k not in conditionals:
            conditionals[k] = (target, make_conditional(key, target, settings))
        return conditionals[k][1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(workflow, "build_target", cached_target)
        mp.setattr(workflow, "build_flow", cached_flow)
        mp.setattr(workflow, "make_conditional", cached_conditional)
        yield
