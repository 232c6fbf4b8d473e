"""The public namespace: ``import coarseflow as cf`` and the README's Python example."""

import importlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import coarseflow as cf

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_public_name_is_its_modules_object():
    for name in cf.__all__:
        if name == "__version__":
            assert isinstance(cf.__version__, str) and cf.__version__
            continue
        module = importlib.import_module(cf._EXPORTS[name])
        assert getattr(cf, name) is getattr(module, name), name
    assert set(cf.__all__) <= set(dir(cf))
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        cf.nonsense  # noqa: B018


def test_import_coarseflow_imports_no_submodule():
    """Lazy: ``import coarseflow`` loads none of its modules (nor JAX), so the CLI's start and a
    lower module's ``from coarseflow import checks`` stay cheap."""
    code = (
        "import sys, coarseflow; print(sorted(m for m in sys.modules "
        "if m.startswith('coarseflow.') or m == 'jax'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_readme_python_example_runs():
    """The README's ```python block, run as it stands (the double well of two coordinates:
    trains in a few seconds after compiling)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 1
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)  # noqa: S102
    assert namespace["result"].betas[-1] == 1.0
    assert namespace["samples"].log_weights.shape == (2000,)
    assert namespace["ess"] > 1000  # about 1900: q(X) is close to the double well's p(X)
    # log Z = log(0.1 sqrt(2 pi) * integral of exp(-(x^2 - 1)^2 / 0.1) over [-2.5, 2.5])
    x = np.linspace(-2.5, 2.5, 200_001)
    exact = np.log(0.1 * np.sqrt(2 * np.pi) * np.trapezoid(np.exp(-((x * x - 1) ** 2) / 0.1), x))
    assert exact == pytest.approx(-1.9413, abs=1e-4)
    assert namespace["log_z"] == pytest.approx(exact, abs=0.03)
