"""Prompt templates: ``{{name}}`` placeholders, compiled once into segments so a paid call only joins strings.

Syntax:
- ``{{name}}`` (spaces inside the braces allowed: ``{{ name }}``) is replaced by the value of parameter ``name``.
- ``{{{{`` writes a literal ``{{``. A ``}}`` on its own is plain text.
- Any other ``{{`` (say ``{{ 2 + 2 }}`` or an unclosed ``{{name``) is an error, so typos never reach buyers.

Values are inserted as data: the rendered text is never parsed again, so a value containing ``{{other}}`` stays
exactly that text, and nothing is evaluated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_PLACEHOLDER = re.compile(r"\{\{\s*(" + PARAM_NAME.pattern + r")\s*\}\}")
LITERAL_OPEN = "{{{{"


class TemplateError(ValueError):
    """A template that cannot be compiled; ``position`` is the character offset of the problem."""

    def __init__(self, message: str, position: int):
        super().__init__(message)
        self.position = position


@dataclass(frozen=True, slots=True)
class Placeholder:
    name: str


@dataclass(frozen=True, slots=True)
class CompiledTemplate:
    """A template as alternating literal strings and placeholders."""

    segments: tuple[str | Placeholder, ...]

    @property
    def placeholders(self) -> frozenset[str]:
        return frozenset(s.name for s in self.segments if isinstance(s, Placeholder))

    @property
    def literal_text(self) -> str:
        """The template without its placeholders (for size estimates)."""
        return "".join(s for s in self.segments if isinstance(s, str))

    def render(self, values: dict[str, str]) -> str:
        """Join the segments; a missing value renders as an empty string. Values are never re-parsed."""
        return "".join(s if isinstance(s, str) else values.get(s.name, "") for s in self.segments)


def _parse(text: str) -> tuple[str | Placeholder, ...]:
    segments: list[str | Placeholder] = []
    literal: list[str] = []
    pos = 0
    while True:
        start = text.find("{{", pos)
        if start < 0:
            literal.append(text[pos:])
            break
        literal.append(text[pos:start])
        if text.startswith(LITERAL_OPEN, start):
            literal.append("{{")
            pos = start + len(LITERAL_OPEN)
            continue
        match = _PLACEHOLDER.match(text, start)
        if match is None:
            raise TemplateError(
                f"Unexpected '{{{{' at character {start + 1}: write {{{{name}}}} for a parameter "
                "or {{{{{{{{ for a literal '{{{{'.",
                start,
            )
        if lit := "".join(literal):
            segments.append(lit)
        literal = []
        segments.append(Placeholder(match.group(1)))
        pos = match.end()
    if lit := "".join(literal):
        segments.append(lit)
    return tuple(segments)


@lru_cache(maxsize=4096)
def compile_template(text: str) -> CompiledTemplate:
    """Parse a template once (results are cached by text); raise TemplateError on bad syntax."""
    return CompiledTemplate(_parse(text or ""))
