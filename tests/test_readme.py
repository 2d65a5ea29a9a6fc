"""The README: its set-up commands, its form, and its Python snippets.

The snippets run as they stand, in order, in one namespace, as a reader
would paste them, in a fresh folder.
"""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    README = f.read()


def blocks(language):
    return re.findall(rf"^```{language}\n(.*?)^```", README, re.M | re.S)


def test_starts_with_the_two_set_up_commands():
    first = README.split("```bash\n", 1)[1].split("```", 1)[0]
    assert first.splitlines() == [
        'pip install -e ".[examples]" && python examples/quickstart.py',
        'pip install -e ".[test]" && python -m pytest -q',
    ]
    # Nothing but the title comes before them.
    assert README.index("```bash") == README.index("\n\n") + 2


def test_no_tooling_markers():
    assert "<!--" not in README


def test_links_to_files_in_the_repository_exist():
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if "://" not in target:
            assert os.path.exists(os.path.join(ROOT, target)), target


def test_python_snippets_run_in_order(tmp_path, monkeypatch):
    snippets = blocks("python")
    assert len(snippets) >= 2
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}
    for snippet in snippets:
        exec(compile(snippet, "README.md", "exec"), namespace)
    assert sorted(namespace["history"].history) == ["kl", "loss"]
    assert os.path.isfile(tmp_path / "vib.keras")
