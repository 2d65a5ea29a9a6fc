"""Record what each code cell of a tutorial prints, for its page.

    python docs/record_tutorial_output.py insert_bottleneck "a note"

runs `examples/insert_bottleneck.py` cell by cell (the cells of its page:
the code between the prose strings) in one namespace, as `python
examples/insert_bottleneck.py` would run it, and writes what each cell
printed to `docs/tutorials/output/insert_bottleneck.json`, with the command
and the note (when, on which backend). The page shows it under each cell.
Extra arguments after the note go to the script (e.g. `--data-dir`).

Record only runs whose output may be published: a tutorial that prints
timings must be recorded on a quiet machine, with the run that its header's
"Run time" reports.
"""

import contextlib
import io
import json
import os
import sys

DOCS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(DOCS)
sys.path.insert(0, DOCS)

import hooks  # noqa: E402


class _Tee(io.TextIOBase):
    """Writes to the terminal and to the current cell's buffer."""

    def __init__(self, terminal):
        self.terminal = terminal
        self.buffer = io.StringIO()

    def write(self, text):
        self.terminal.write(text)
        return self.buffer.write(text)

    def flush(self):
        self.terminal.flush()


def _final_lines(text):
    # A progress bar rewrites its line with "\r": keep what it ended with.
    return "\n".join(line.split("\r")[-1] for line in text.split("\n"))


def main(name, note, script_args):
    path = os.path.join(ROOT, "examples", name + ".py")
    with open(path, encoding="utf-8") as f:
        source = f.read()
    chunks = hooks.script_chunks(source)
    cells = [text for kind, text in chunks if kind == "code"]
    sys.argv = [path] + script_args
    sys.path.insert(0, os.path.dirname(path))
    namespace = {"__name__": "__main__", "__file__": path}
    outputs = []
    tee = _Tee(sys.stdout)
    for cell in cells:
        tee.buffer = io.StringIO()
        with contextlib.redirect_stdout(tee):
            exec(compile(cell, path, "exec"), namespace)
        outputs.append(_final_lines(tee.buffer.getvalue()))
    command = " ".join(["python", f"examples/{name}.py"] + script_args)
    record = {"command": command, "note": note, "outputs": outputs}
    os.makedirs(hooks.OUTPUTS, exist_ok=True)
    target = os.path.join(hooks.OUTPUTS, name + ".json")
    with open(target, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    print(f"\nRecorded {len(cells)} cells to {target}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
