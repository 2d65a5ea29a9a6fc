"""A griffe extension for Keras-style docstrings.

Keras writes the body of an `Example:` section at the indentation of its
title (`>>>` lines right under `Example:`), while Google-style parsers expect
it indented. This extension indents such bodies so that the examples render
as code, the way the doctests run them, and splits `x, y: ...` argument
entries in two. A "Call arguments" section (which Google-style parsers do
not know, and render as one paragraph) becomes a list, one item per
argument. Private bases (a class from a `_module`, or a `_Name`) are left
out of a class's "Bases:" line, and `# doctest: ...` directives out of the
examples (they are for the test runner, not the reader).
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


_CALL_ARGUMENTS = re.compile(r"^(\s*)Call arguments:\s*$")
_ENTRY = re.compile(r"^(\s*)(\*{0,2}\w+): (.*)$")


def list_call_arguments(text):
    """The entries of a "Call arguments:" section as Markdown list items."""
    out, body_indent, in_section = [], None, False
    for line in text.splitlines():
        if _CALL_ARGUMENTS.match(line):
            in_section, body_indent = True, None
            out.append(line)
            continue
        if in_section and line.strip():
            indent = len(line) - len(line.lstrip())
            if body_indent is None:
                body_indent = indent
            if indent < body_indent or (
                _HEADER.match(line) and not line.rstrip().endswith("::")
            ):
                in_section = False
            else:
                match = _ENTRY.match(line)
                if match and len(match.group(1)) == body_indent:
                    name, rest = match.group(2), match.group(3)
                    line = f"{match.group(1)}- `{name}`: {rest}"
        out.append(line)
    return "\n".join(out)


_DIRECTIVE = re.compile(r"^(\s*(?:>>>|\.\.\.) .*?)\s*# doctest:.*$", re.M)


def strip_doctest_directives(text):
    """`>>> f(x)  # doctest: +SKIP` as `>>> f(x)`."""
    return _DIRECTIVE.sub(r"\1", text)


def _is_private(base):
    path = str(getattr(base, "canonical_path", None) or base)
    return any(part.startswith("_") for part in path.split("."))


class KerasDocstrings(griffe.Extension):
    def on_instance(self, *, obj, **kwargs):
        if obj.docstring is not None:
            text = list_call_arguments(obj.docstring.value)
            text = split_joint_args(indent_sections(text))
            obj.docstring.value = strip_doctest_directives(text)
        if obj.is_class:
            obj.bases = [b for b in obj.bases if not _is_private(b)]
