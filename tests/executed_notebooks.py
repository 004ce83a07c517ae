"""Execute each notebook once in `make test`: keep what nbval executed and build the book from it.

As a pytest plugin (``-p tests.executed_notebooks``), next to ``--nbval-lax``:

``--executed-dir=DIR``
    After the last cell of a notebook has run, write the notebook with the outputs nbval collected
    (`IPyNbCell.test_outputs`, kept in the order they came; adjacent outputs of one stream merged),
    execution counts 1, 2, … in the order the cells ran, the kernel's ``language_info`` and the
    ipywidgets state (gathered from the kernel's comm messages, as nbclient does) to
    DIR/<path relative to the repository>, as valid nbformat. Its metadata ``nbval_run`` records the
    source's SHA-256 and whether every cell ran and passed. Not mimicked: ``clear_output`` and
    ``with output:`` capture (`vizlib.widgets.live_figure` sets an Output widget's outputs instead).
``--notebook-times=FILE``
    Write a Markdown table of each notebook's wall time, summed over its cells (setup, call and
    teardown, so kernel start and stop are included), for the record in ``benchmarks/``.

Both work under pytest-xdist with ``--dist loadfile``: each worker writes the notebooks it ran,
the controller writes the times.

As a script, ``python tests/executed_notebooks.py order FILE NOTEBOOK...`` prints the notebooks
longest first by the times in FILE (the order `make test` hands them to the workers in), and
``python tests/executed_notebooks.py stage DIR`` turns DIR into the source of the test
build of the book: it checks that every chapter has an executed copy there from a passing run of
the current source, then copies in the configuration (with ``execute_notebooks: "off"``), the
table of contents, the bibliography and everything in ``book/`` that is not a notebook.
"""
from __future__ import annotations

import base64
import copy
import datetime
import hashlib
import os
import re
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BOOK = "book"
RUN_KEY = "nbval_run"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def source_notebooks(root: Path = ROOT) -> list[Path]:
    return sorted(path for path in (root / BOOK).rglob("*.ipynb") if ".ipynb_checkpoints" not in path.parts)


# ---------------------------------------------------------------- the pytest plugin

def pytest_addoption(parser):
    group = parser.getgroup("executed_notebooks", "keep the notebooks nbval executed")
    group.addoption("--executed-dir", default=None, metavar="DIR",
                    help="write each notebook as nbval executed it to DIR/<relative path>")
    group.addoption("--notebook-times", default=None, metavar="FILE",
                    help="write a Markdown table of the wall time of each notebook to FILE")


def pytest_configure(config):
    if config.getoption("executed_dir") or config.getoption("notebook_times"):
        if getattr(config.option, "numprocesses", None) and config.option.dist not in ("loadfile", "loadscope"):
            raise pytest.UsageError(
                "notebooks under pytest-xdist need --dist loadfile: one kernel runs all cells of a notebook")
        config.pluginmanager.register(ExecutedNotebooks(config), "executed_notebooks_recorder")


def is_cell(item) -> bool:
    return type(item).__name__ == "IPyNbCell" and hasattr(item, "test_outputs")


CARRIAGE_RETURN = re.compile(r"^.*\r(?=[^\n])", re.MULTILINE)    # a line overwritten by a later one
BACKSPACE = re.compile("[^\n]\x08")                               # a character and a backspace


def merge_adjacent_streams(outputs: list) -> list:
    """Merge consecutive outputs of the same stream, as nbclient does, and apply backspaces and
    carriage returns (progress bars), as nbval means to."""
    merged = []
    for output in outputs:
        output = copy.copy(output)
        previous = merged[-1] if merged else None
        if (output.output_type == "stream" and previous is not None and previous.output_type == "stream"
                and previous.name == output.name):
            previous.text += output.text
        else:
            merged.append(output)
    for output in merged:
        if output.output_type == "stream":
            text = output.text
            while True:
                shorter = BACKSPACE.sub("", text)
                if shorter == text:
                    break
                text = shorter
            output.text = CARRIAGE_RETURN.sub("", text)
    return merged


class WidgetState:
    """The ipywidgets models a kernel announced, kept as nbclient's `handle_comm_msg` keeps them."""

    def __init__(self):
        self.state: dict[str, dict] = {}
        self.buffers: dict[str, dict[tuple, dict]] = defaultdict(dict)

    def record(self, msg: dict) -> None:
        if not msg.get("msg_type", "").startswith("comm_"):
            return
        content = msg["content"]
        data = content.get("data") or {}
        if "state" not in data:
            return
        comm_id = content["comm_id"]
        self.state.setdefault(comm_id, {}).update(data["state"])
        for path, buffer in zip(data.get("buffer_paths") or [], msg.get("buffers") or []):
            self.buffers[comm_id][tuple(path)] = {
                "data": base64.b64encode(bytes(buffer)).decode("ascii"), "encoding": "base64", "path": path}

    def metadata(self) -> dict | None:
        models = {}
        for comm_id, state in self.state.items():
            if "_model_name" not in state:
                continue
            models[comm_id] = {"model_name": state["_model_name"], "model_module": state.get("_model_module"),
                               "model_module_version": state.get("_model_module_version"), "state": state}
            if self.buffers.get(comm_id):
                models[comm_id]["buffers"] = list(self.buffers[comm_id].values())
        if not models:
            return None
        return {"application/vnd.jupyter.widget-state+json": {"state": models, "version_major": 2,
                                                               "version_minor": 0}}


class ExecutedNotebooks:
    def __init__(self, config):
        self.config = config
        self.root = Path(config.rootpath)
        executed_dir = config.getoption("executed_dir")
        self.executed_dir = None if executed_dir is None else self.root / executed_dir
        times = config.getoption("notebook_times")
        self.times_file = None if times is None else self.root / times
        self.is_worker = hasattr(config, "workerinput")
        self.cells: dict[object, list] = {}        # IPyNbFile -> its collected cells, in order
        self.widgets: dict[object, WidgetState] = {}
        self.language_info: dict[object, dict | None] = {}
        self.running: dict[object, object] = {}    # IPyNbFile -> the cell being executed
        self.outputs: dict[object, list] = {}      # cell -> its outputs in the order they came
        self.failed: set[str] = set()
        self.written: set[object] = set()
        self.durations: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.outcomes: dict[str, dict[str, str]] = defaultdict(dict)
        self.started = time.perf_counter()

    # --- collection: find the notebooks and listen to their kernels' messages
    def pytest_collection_modifyitems(self, items):
        for item in items:
            if is_cell(item):
                self.cells.setdefault(item.parent, []).append(item)
        for notebook in self.cells:
            self.widgets[notebook] = WidgetState()
            notebook.get_kernel_message = self.listening(notebook, notebook.get_kernel_message)

    def listening(self, notebook, get_kernel_message):
        """nbval's `get_kernel_message`, which also records the widgets' state and keeps a copy of
        each output nbval collected before it merges all streams of a cell into the first one
        (which would move text printed after a figure to before it)."""
        def get_and_record(*args, **kwargs):
            self.keep_outputs(self.running.get(notebook))
            msg = get_kernel_message(*args, **kwargs)
            self.widgets[notebook].record(msg)
            return msg
        return get_and_record

    def keep_outputs(self, item) -> None:
        if item is None or item.test_outputs is None:
            return
        kept = self.outputs.setdefault(item, [])
        kept.extend(copy.copy(output) for output in item.test_outputs[len(kept):])

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item):
        if not is_cell(item):
            yield
            return
        self.running[item.parent] = item
        yield
        del self.running[item.parent]
        # After an error output nbval reads no further through `get_kernel_message` and merges
        # nothing: keep that last output too. (A merged list is never longer than the kept one.)
        self.keep_outputs(item)

    # --- running: ask each kernel for its language_info (as nbclient does), note failures, and
    # write a notebook after its last cell
    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_setup(self, item):
        yield
        notebook = item.parent if is_cell(item) else None
        if notebook is None or notebook in self.language_info or getattr(notebook, "kernel", None) is None:
            return
        self.language_info[notebook] = None
        try:
            client = notebook.kernel.kc
            msg_id = client.kernel_info()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                reply = client.get_shell_msg(timeout=max(deadline - time.monotonic(), 0.1))
                if reply["parent_header"].get("msg_id") == msg_id:
                    self.language_info[notebook] = reply["content"].get("language_info")
                    break
        except Exception:  # noqa: BLE001 - only the syntax highlighting of the built book depends on it
            pass

    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.failed.add(report.nodeid)
        path, _, cell = report.nodeid.partition("::")
        if path.endswith(".ipynb") and cell:
            self.durations[path][cell] += report.duration
            if report.when == "call" or report.outcome != "passed":
                self.outcomes[path][cell] = report.outcome

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_teardown(self, item, nextitem):
        if self.executed_dir is None or not is_cell(item):
            return
        if nextitem is None or nextitem.parent is not item.parent:
            self.write(item.parent)

    def pytest_sessionfinish(self, session):
        if self.executed_dir is not None:
            for notebook in self.cells:      # notebooks whose last cell never ran (-x, -k, interrupted)
                if notebook not in self.written and any(cell.test_outputs is not None
                                                        for cell in self.cells[notebook]):
                    self.write(notebook)
        if self.times_file is not None and not self.is_worker and self.durations:
            self.write_times(time.perf_counter() - self.started)

    def relative(self, path: Path) -> Path:
        path = Path(path).resolve()
        try:
            return path.relative_to(self.root)
        except ValueError:
            return Path(path.name)

    def write(self, notebook) -> Path:
        import nbformat

        self.written.add(notebook)
        nb = copy.deepcopy(notebook.nb)
        by_number = {cell.cell_num: cell for cell in self.cells[notebook]}
        count, complete = 0, True
        code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
        for number, cell in enumerate(code_cells):
            item = by_number.get(number)
            outputs = None if item is None else item.test_outputs
            if outputs is None:                  # not run: skipped, deselected or never reached
                complete = complete and item is not None and item.options.get("skip", False)
                cell.outputs, cell.execution_count = [], None
                continue
            count += 1
            cell.execution_count = count
            outputs = merge_adjacent_streams(self.outputs.get(item, outputs))
            cell.outputs = [self.output(output, count) for output in outputs]
        if self.language_info.get(notebook):
            nb.metadata["language_info"] = self.language_info[notebook]
        widgets = self.widgets[notebook].metadata()
        if widgets:
            nb.metadata["widgets"] = widgets
        source = Path(str(notebook.fspath))
        passed = complete and not any(cell.nodeid in self.failed for cell in self.cells[notebook])
        nb.metadata[RUN_KEY] = {"source_sha256": sha256(source), "complete": complete, "passed": passed}
        nbformat.validate(nb)
        target = self.executed_dir / self.relative(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, str(target))
        return target

    @staticmethod
    def output(output, execution_count):
        """One of nbval's outputs as an nbformat output."""
        import nbformat

        output = dict(copy.deepcopy(output))
        kind = output["output_type"]
        if kind == "execute_result":
            output["execution_count"] = execution_count
        if kind in ("execute_result", "display_data"):
            output.setdefault("metadata", {})
        if kind == "error":
            output = {key: output[key] for key in ("output_type", "ename", "evalue", "traceback")}
        return nbformat.from_dict(output)

    def write_times(self, session_seconds: float) -> None:
        workers = getattr(self.config.option, "numprocesses", None) or 1
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        rows, total, cells_total = [], 0.0, 0
        for path in sorted(self.durations):
            cells = self.durations[path]
            seconds = sum(cells.values())
            slowest = max(cells, key=cells.get)
            outcomes = set(self.outcomes[path].values())
            result = "failed" if "failed" in outcomes else "passed"
            rows.append(f"| {path} | {len(cells)} | {seconds:.1f} | {slowest}: {cells[slowest]:.1f} | {result} |")
            total += seconds
            cells_total += len(cells)
        lines = [
            "# Time per notebook",
            "",
            f"Last measured by `make test` on {now}: nbval (`pytest --nbval-lax`) on {os.cpu_count()} CPU cores,",
            f"{workers} pytest worker(s). A notebook's time is the wall time summed over its cells (setup, call",
            "and teardown, so kernel start and stop are included). Written by `tests/executed_notebooks.py`.",
            "",
            "| notebook | cells | seconds | slowest cell (s) | result |",
            "|---|---:|---:|---|---|",
            *rows,
            f"| all notebooks | {cells_total} | {total:.1f} | | |",
            "",
            f"Wall time of the whole notebook run: {session_seconds:.1f} s.",
            "",
        ]
        self.times_file.parent.mkdir(parents=True, exist_ok=True)
        self.times_file.write_text("\n".join(lines))


# ---------------------------------------------------------------- staging the test build of the book

def stage(executed_dir: Path, root: Path = ROOT) -> None:
    """Make `executed_dir` a book source whose notebooks are the executed ones; execution off."""
    import nbformat
    import yaml

    executed_dir = Path(executed_dir)
    problems = []
    for source in source_notebooks(root):
        relative = source.relative_to(root)
        executed = executed_dir / relative
        if not any(cell.cell_type == "code" for cell in nbformat.read(str(source), as_version=4).cells):
            executed.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, executed)         # nothing to execute; nbval collected no cells
            continue
        if not executed.exists():
            problems.append(f"{relative}: not executed (run `make notebooks`)")
            continue
        run = nbformat.read(str(executed), as_version=4).metadata.get(RUN_KEY, {})
        if run.get("source_sha256") != sha256(source):
            problems.append(f"{relative}: the executed copy is of an older version of the notebook")
        elif not (run.get("complete") and run.get("passed")):
            problems.append(f"{relative}: its nbval run did not pass")
    if problems:
        sys.exit("Cannot build the book from the nbval run:\n  " + "\n  ".join(problems))

    config = yaml.safe_load((root / "_config.yml").read_text())
    config.setdefault("execute", {})["execute_notebooks"] = "off"
    (executed_dir / "_config.yml").write_text(
        "# Generated by tests/executed_notebooks.py from ../../_config.yml: the notebooks here are the ones\n"
        "# nbval executed, so the book build does not execute them again.\n"
        + yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    shutil.copy2(root / "_toc.yml", executed_dir / "_toc.yml")
    for bib in config.get("bibtex_bibfiles", []):
        (executed_dir / bib).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / bib, executed_dir / bib)
    shutil.copytree(root / BOOK, executed_dir / BOOK, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints", "__pycache__"))


def longest_first(times_file: Path, notebooks: list[str]) -> list[str]:
    """`notebooks` ordered by the seconds `times_file` (a ``--notebook-times`` table) last measured,
    longest first, so that two workers finish close together; a notebook it does not list comes
    first (its cost is unknown)."""
    seconds = {}
    if times_file.exists():
        for line in times_file.read_text().splitlines():
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if len(cells) >= 3 and cells[0].endswith(".ipynb"):
                try:
                    seconds[cells[0]] = float(cells[2])
                except ValueError:
                    pass
    return sorted(notebooks, key=lambda notebook: -seconds.get(notebook, float("inf")))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "stage":
        stage(Path(sys.argv[2]))
    elif len(sys.argv) >= 3 and sys.argv[1] == "order":
        print(" ".join(longest_first(Path(sys.argv[2]), sys.argv[3:])))
    else:
        sys.exit(f"usage: {sys.argv[0]} stage DIR | order TIMES_FILE NOTEBOOK...")
