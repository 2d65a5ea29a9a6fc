"""The README: its set-up commands, its form, and its Python snippets.

The snippets run as they stand, in order, in one namespace, as a reader
would paste them, in a fresh folder.
"""

import configparser
import glob
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


def _setup_cfg():
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    return config


def _test_section():
    return README.split("\n## Tests\n", 1)[1].split("\n## ", 1)[0]


def test_the_test_section_names_every_tier():
    markers = _setup_cfg()["tool:pytest"]["markers"].strip().splitlines()
    names = [re.match(r"\s*(\w+)", line).group(1) for line in markers]
    assert sorted(names) == ["browser", "large", "slow"]
    section = _test_section()
    for name in names:
        assert f"python -m pytest -m {name}" in section, name
    # The default tier is the README's own test command.
    assert "`python -m pytest -q`, the default tier" in section


def test_skip_reasons_name_extras_that_exist_and_are_documented():
    extras = set(_setup_cfg()["options.extras_require"])
    named = set()
    for path in glob.glob(os.path.join(ROOT, "tests", "*.py")):
        with open(path, encoding="utf-8") as f:
            named |= set(re.findall(r"needs the (\w+) extra", f.read()))
    assert named, "no skip reason names an extra"
    assert named <= extras, named - extras
    section = _test_section()
    for extra in named:
        assert f"`{extra}` extra" in section, extra


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
