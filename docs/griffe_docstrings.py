"""Griffe extension for the API reference: the project's docstring idioms shown as the Google style reads them.

- reST roles (``:func:`uniemo.x```, ``:class:`~X```) become Markdown code spans, so the page shows ``uniemo.x``;
- an entry that names several fields at once (``scene_vocab / object_vocab: the names …``) becomes one entry per
  name, with the same text (griffe would read ``/ object_vocab`` as the first name's type).

The docstrings in the source stay as they are written; only what mkdocstrings renders changes.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|class|meth|attr|mod|data|obj|exc):`~?([^`]+)`")
_SHARED = re.compile(r"^(\s+)([A-Za-z_]\w*(?:\s*/\s*[A-Za-z_]\w*)+):(\s.*)?$")


def _split_shared_entries(text: str) -> str:
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        match = _SHARED.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        indent = len(match.group(1))
        body = [match.group(3) or ""]
        i += 1
        while i < len(lines) and lines[i].strip() and len(lines[i]) - len(lines[i].lstrip()) > indent:
            body.append("\n" + lines[i])
            i += 1
        for name in (n.strip() for n in match.group(2).split("/")):
            out.append(f"{match.group(1)}{name}:{''.join(body)}")
    return "\n".join(out)


class DocstringMarkup(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _split_shared_entries(_ROLE.sub(r"`\1`", obj.docstring.value))
