"""A griffe extension for the API reference: the docstrings' Sphinx roles as Markdown.

coarseflow's docstrings name other objects the Sphinx way (``:func:`refine```,
``:mod:`~coarseflow.samplers.kernels```). Markdown would print the role itself, so this
extension rewrites each one, before the docstrings are parsed, as inline code that links to the
object's own entry when the API reference documents it (an *optional* autorefs reference: an
object no page renders stays plain code and is not a warning). A short name resolves as Python
would in the docstring's scope (its module's members and imports). It changes nothing in the
package; mkdocs.yml loads it as ``docs/griffe_roles.py:SphinxRoles``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|mod|class|meth|attr|data|obj|exc|const):`(~?)([\w.]+)(?:\(\))?`")


def _resolve(obj: griffe.Object, name: str) -> str | None:
    """The full path of ``name`` seen from ``obj``'s docstring, or None if it is not found."""
    if name.startswith("coarseflow."):
        return name
    head, _, rest = name.partition(".")
    scope: griffe.Object | None = obj
    while scope is not None:
        try:
            path = scope.resolve(head)
        except griffe.NameResolutionError:
            scope = scope.parent
            continue
        return f"{path}.{rest}" if rest else path
    return None


def _markdown(obj: griffe.Object, match: re.Match) -> str:
    tilde, name = match.groups()
    shown = name.rsplit(".", 1)[-1] if tilde else name
    path = _resolve(obj, name)
    if path is None:
        return f"`{shown}`"
    return f'<autoref identifier="{path}" optional><code>{shown}</code></autoref>'


class SphinxRoles(griffe.Extension):
    """Rewrites ``:role:`name``` in every docstring of the loaded package (see the module)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        seen: set[int] = set()
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if obj.docstring is not None and ":`" in obj.docstring.value:
                doc = obj.docstring
                doc.value = _ROLE.sub(lambda m, o=obj: _markdown(o, m), doc.value)
            stack.extend(m for m in obj.members.values() if not m.is_alias)
