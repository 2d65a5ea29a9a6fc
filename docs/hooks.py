"""MkDocs hooks: tutorial pages from `examples/`, and an API coverage check.

- Every `examples/*.py` (keras.io format: a header docstring with `Title:`,
  `Description:`, ..., then prose strings between module-level code) becomes
  the page `tutorials/<name>.md`, and the Tutorials section of the navigation
  lists them. Their figures are committed in `docs/tutorials/img/`.
- The build fails if a public class or function of a keras_vib subpackage
  has no docstring or is not rendered by a `::: keras_vib...` directive in
  `docs/api/` (the API reference is generated from the docstrings only).
"""

import ast
import glob
import importlib
import inspect
import json
import os
import re
import textwrap

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
# Reading order of the tutorials; any other example follows, by name.
ORDER = (
    "quickstart",
    "insert_bottleneck",
    "imdb_cnn_vib",
    "mnist_vib",
    "vae_iwae_mnist",
    "keras_io_vae_port",
    "kl_weight",
)
PUBLIC_MODULES = (
    "layers",
    "surgery",
    "models",
    "likelihoods",
    "losses",
    "ops",
    "schedules",
    "callbacks",
    "prediction",
    "export",
    "datasets",
)
HEADER_KEYS = ("Author", "Date created", "Last modified", "Run time")


def _examples():
    names = [
        os.path.splitext(os.path.basename(p))[0]
        for p in glob.glob(os.path.join(EXAMPLES, "*.py"))
    ]
    names = [n for n in names if not n.startswith("_")]
    rank = {n: i for i, n in enumerate(ORDER)}
    return sorted(names, key=lambda n: (rank.get(n, len(ORDER)), n))


def parse_header(text):
    """`Key: value` lines (indented lines continue a value) as a dict."""
    fields, key = {}, None
    for line in textwrap.dedent(text).strip().splitlines():
        match = re.match(r"^([A-Z][A-Za-z ]+):\s*(.*)$", line)
        if match and not line.startswith(" "):
            key = match.group(1)
            fields[key] = match.group(2).strip()
        elif key:
            fields[key] += " " + line.strip()
    return fields


#: Recorded outputs: `docs/tutorials/output/<name>.json`, written by
#: `docs/record_tutorial_output.py` (what each code cell printed).
OUTPUTS = os.path.join(ROOT, "docs", "tutorials", "output")


def script_chunks(source):
    """A keras.io-style script as `[(kind, text)]`, kind "prose" or "code"."""
    lines = source.splitlines()
    tree = ast.parse(source)
    chunks, code_start = [], 0

    def add_code(start, end):
        code = "\n".join(lines[start:end]).strip("\n")
        if code.strip():
            chunks.append(("code", code))

    for node in tree.body:
        is_prose = (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        )
        if is_prose:
            add_code(code_start, node.lineno - 1)
            chunks.append(("prose", node.value.value))
            code_start = node.end_lineno
    add_code(code_start, len(lines))
    return chunks


def _recorded_output(name):
    path = os.path.join(OUTPUTS, os.path.splitext(name)[0] + ".json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def script_to_markdown(path):
    """A keras.io-style script as (title, description, markdown).

    If the script's output was recorded, what each code cell printed
    follows it, as on keras.io.
    """
    with open(path, encoding="utf-8") as f:
        source = f.read()
    chunks = script_chunks(source)
    name = os.path.basename(path)
    recorded = _recorded_output(name)
    header = {}
    if chunks and chunks[0][0] == "prose" and "Title:" in chunks[0][1]:
        header = parse_header(chunks.pop(0)[1])
    title = header.get("Title", name)
    out = [f"# {title}", ""]
    for key in HEADER_KEYS:
        if key in header:
            out.append(f"**{key}:** {header[key]}<br>")
    out.append(
        f"**Source:** `examples/{name}`; run it with "
        f"`python examples/{name}` (`--smoke` for a run of seconds)."
    )
    out.append("")
    if "Description" in header:
        out += [f"*{header['Description']}*", ""]
    outputs = []
    if recorded is not None:
        outputs = recorded["outputs"]
        out += [
            f"The output shown under the code was printed by "
            f"`{recorded['command']}` ({recorded['note']}).",
            "",
        ]
    cell = 0
    for kind, text in chunks:
        if kind == "prose":
            out += [textwrap.dedent(text).strip(), ""]
            continue
        out += ["```python", text, "```", ""]
        printed = outputs[cell].strip("\n") if cell < len(outputs) else ""
        cell += 1
        if printed:
            out += ["```text", printed, "```", ""]
    return title, header.get("Description", ""), "\n".join(out)


def _tutorial_pages():
    pages = []
    for name in _examples():
        title, description, markdown = script_to_markdown(
            os.path.join(EXAMPLES, name + ".py")
        )
        pages.append((name, title, description, markdown))
    return pages


def on_config(config):
    pages = _tutorial_pages()
    entries = [{"Overview": "tutorials/index.md"}] + [
        {title: f"tutorials/{name}.md"} for name, title, _, _ in pages
    ]
    for item in config["nav"] or []:
        if isinstance(item, dict) and "Tutorials" in item:
            item["Tutorials"] = entries
    return config


def on_files(files, config):
    pages = _tutorial_pages()
    index = [
        "# Tutorials",
        "",
        "Each tutorial is one script in `examples/` that reads top to bottom "
        "and runs as it is; its header says how long the default run takes "
        "on a 2-core CPU, and `--smoke` runs it in seconds. Data comes from "
        "`keras_vib.datasets`: set `KERAS_VIB_DATA` (or pass `--data-dir`) "
        "to a folder with the Keras `.npz` files to work offline. Figures "
        "are written to `figures/` (`--figure-dir` to change it).",
        "",
    ]
    for name, title, description, markdown in pages:
        files.append(
            File.generated(config, f"tutorials/{name}.md", content=markdown)
        )
        index.append(f"- [{title}]({name}.md): {description}")
    files.append(
        File.generated(
            config, "tutorials/index.md", content="\n".join(index) + "\n"
        )
    )
    return files


def _import_quietly(name):
    """Import a module with TensorFlow's C++ start-up messages hidden."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        return importlib.import_module(name)
    finally:
        os.dup2(saved, 2)
        os.close(null)
        os.close(saved)


def _public_symbols():
    _import_quietly("keras")
    symbols = {}
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(f"keras_vib.{module_name}")
        for name in dir(module):
            if name.startswith("_"):
                continue
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            defined_in = getattr(obj, "__module__", "") or ""
            if not defined_in.startswith("keras_vib") or "._" in defined_in:
                continue
            symbols[f"keras_vib.{module_name}.{name}"] = obj
    return symbols


def on_pre_build(config):
    documented = set()
    for path in glob.glob(os.path.join(config["docs_dir"], "api", "*.md")):
        with open(path, encoding="utf-8") as f:
            documented |= set(re.findall(r"^:::\s*(\S+)", f.read(), re.M))
    problems = []
    for path, obj in sorted(_public_symbols().items()):
        if path not in documented:
            problems.append(f"{path} is public but not in docs/api/")
        if not (obj.__doc__ or "").strip():
            problems.append(f"{path} has no docstring")
    if problems:
        raise PluginError(
            "API reference check failed:\n  " + "\n  ".join(problems)
        )
