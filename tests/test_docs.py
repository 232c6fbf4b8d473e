"""The documentation site (mkdocs.yml, docs/): it builds in strict mode, offline, and its
API reference covers the public namespace ``import coarseflow as cf``."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import coarseflow

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings_handlers.python")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> tuple[Path, str]:
    """The site built by ``mkdocs build --strict`` (any warning fails it), and its log."""
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--clean", "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{log[-6000:]}"
    return out, log


def test_build_is_strict_and_has_no_warnings(site):
    out, log = site
    assert "WARNING" not in log, log
    assert (out / "index.html").is_file()
    for page in ("targets", "model", "training", "predict", "analysis", "workflow", "index"):
        assert (out / "api" / f"{page}.html").is_file(), page


def test_every_docs_page_is_in_the_site(site):
    out, _ = site
    for md in (ROOT / "docs").glob("*.md"):
        assert (out / md.with_suffix(".html").name).is_file(), md.name


def test_site_fetches_nothing(site):
    """No page loads a script, style sheet, font or image from the network."""
    out, _ = site
    remote = re.compile(r"""<(?:script|link|img|iframe)\b[^>]*(?:src|href)=["']?(?:https?:)?//""")
    for page in out.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert not remote.search(text), page.relative_to(out)
    for css in out.rglob("*.css"):
        assert not re.search(r"@import\s+url\(['\"]?(?:https?:)?//", css.read_text("utf-8")), css


def test_sphinx_roles_are_rendered(site):
    """The docstrings' :func:`name` roles become code (and links), not literal text."""
    out, _ = site
    for page in (out / "api").glob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert not re.search(r":(?:func|mod|class|meth|data|attr):", text), page.name
    predict = (out / "api" / "predict.html").read_text(encoding="utf-8")
    assert 'href="#coarseflow.predict.refine.refine"' in predict  # :func:`refine`, linked


def test_public_namespace_page_lists_exactly_all():
    """docs/api/index.md's table names every ``cf.__all__`` name once (and nothing else); each
    row links to the object where it is defined, which the strict build resolves."""
    page = (ROOT / "docs" / "api" / "index.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| \[`(\w+)`\]\[([\w.]+)\]", page, re.M)
    names = [name for name, _ in rows]
    assert sorted(names) == sorted(n for n in coarseflow.__all__ if n != "__version__")
    for name, path in rows:
        module, _, attr = path.rpartition(".")
        assert attr == name, path
        assert getattr(importlib.import_module(module), name) is getattr(coarseflow, name), path
