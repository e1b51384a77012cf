"""A griffe extension for the API reference: hangfree's docstrings are written as the
stdlib's are, in reStructuredText (``code``, :class:`Name`, literal blocks after ``::``);
this turns the parts that Markdown would show wrongly into Markdown, so the docstrings
stay as they are for ``help()`` and editors.

- :class:`X`, :meth:`X`, :func:`X`, :exc:`X`, :attr:`X` become links to X's entry in the
  reference (mkdocstrings cross-references). A name without a dot is looked for as a
  member of the enclosing class, then of the module, then of the package ``hangfree``;
  a name found nowhere is shown as code, without a link.
- A paragraph ending in ``::`` ends in ``:``, and a lone ``::`` line goes: the indented
  block after it is already a Markdown code block.

Used by mkdocs.yml (mkdocstrings' python handler, option ``extensions``).
"""

from __future__ import annotations

import re
from typing import Any, Optional

import griffe

_ROLE = re.compile(r":(class|meth|func|exc|attr|mod|data|obj):`~?([A-Za-z_][\w.]*)(\(\))?`")
_LITERAL = re.compile(r"(?m)^([ \t]*)(.*?)[ \t]*::[ \t]*$")


def _exists(loader: griffe.GriffeLoader, path: str) -> bool:
    try:
        loader.modules_collection.get_member(path)
    except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return False
    return True


def _module(obj: griffe.Object) -> griffe.Object:
    while not obj.is_module:
        obj = obj.parent  # type: ignore[assignment]
    return obj


def _target(obj: griffe.Object, name: str, loader: griffe.GriffeLoader) -> Optional[str]:
    candidates = []
    if "." in name:
        candidates.append(name)
        candidates.append(f"hangfree.{name}")
    else:
        cls = obj if obj.is_class else obj.parent if obj.parent is not None and obj.parent.is_class else None
        if cls is not None:
            candidates.append(f"{cls.path}.{name}")
        candidates.append(f"{_module(obj).path}.{name}")
        candidates.append(f"hangfree.{name}")
    for path in candidates:
        if _exists(loader, path):
            return path
    return None


def _convert(text: str, obj: griffe.Object, loader: griffe.GriffeLoader) -> str:
    def role(m: "re.Match[str]") -> str:
        kind, name = m.group(1), m.group(2)
        shown = name + ("()" if kind in ("meth", "func") else "")
        target = _target(obj, name, loader)
        return f"[`{shown}`][{target}]" if target else f"`{shown}`"

    def literal(m: "re.Match[str]") -> str:
        indent, before = m.group(1), m.group(2)
        return f"{indent}{before}:" if before else ""

    return _LITERAL.sub(literal, _ROLE.sub(role, text))


class RestToMarkdown(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        def walk(obj: griffe.Object) -> None:
            if obj.docstring is not None:
                obj.docstring.value = _convert(obj.docstring.value, obj, loader)
            for member in obj.members.values():
                if not member.is_alias:
                    walk(member)  # type: ignore[arg-type]

        walk(pkg)
