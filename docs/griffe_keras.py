"""A griffe extension for Keras-style docstrings.

Keras writes the body of an `Example:` section at the indentation of its
title (`>>>` lines right under `Example:`), while Google-style parsers expect
it indented. This extension indents such bodies so that the examples render
as code, the way the doctests run them, and splits `x, y: ...` argument
entries in two.
"""

import re

import griffe

_SECTION = re.compile(
    r"^(\s*)(Example|Examples|Call arguments|Input shape|"
    r"Output shape):\s*$"
)
_HEADER = re.compile(r"^\s*[A-Z][A-Za-z ]*:\s*$")


_JOINT_ARGS = re.compile(r"^(\s+)(\w+), (\w+): (.*)$")


def split_joint_args(text):
    """`x, y: description` (two arguments, one line) as two entries."""
    out = []
    for line in text.splitlines():
        match = _JOINT_ARGS.match(line)
        if match:
            indent, a, b, rest = match.groups()
            out += [f"{indent}{a}: {rest}", f"{indent}{b}: {rest}"]
        else:
            out.append(line)
    return "\n".join(out)


def indent_sections(text):
    lines = text.splitlines()
    out, indent = [], None
    for line in lines:
        match = _SECTION.match(line)
        if match:
            indent = match.group(1)
            out.append(line)
            continue
        if indent is not None:
            if (
                _HEADER.match(line)
                and line.startswith(indent)
                and not (line[len(indent) :].startswith(" "))
            ):
                indent = None
                out.append(line)
                continue
            if line.strip() and not line.startswith(indent + "    "):
                out.append("    " + line)
                continue
        out.append(line)
    return "\n".join(out)


class KerasDocstrings(griffe.Extension):
    def on_instance(self, *, obj, **kwargs):
        if obj.docstring is not None:
            obj.docstring.value = split_joint_args(
                indent_sections(obj.docstring.value)
            )
