"""The chapters as committed: code that fits the web page, and no stored outputs.

The book's HTML cuts code lines off after about 80 characters, so every code line is at most 79.
Outputs come from executing the chapter (`make book`, `make test`), never from the repository.
"""
from pathlib import Path

import nbformat
import pytest

BOOK = Path(__file__).resolve().parent.parent / "book"
NOTEBOOKS = sorted(path for path in BOOK.rglob("*.ipynb") if ".ipynb_checkpoints" not in path.parts)
MAX_LINE = 79


def code_cells(path):
    notebook = nbformat.read(str(path), as_version=4)
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def notebook_id(path):
    return str(path.relative_to(BOOK))


def test_the_book_has_notebooks():
    assert NOTEBOOKS, f"no notebooks found under {BOOK}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_id)
def test_every_code_line_fits_in_79_characters(path):
    too_long = [f"cell {number}, line {line_number}: {len(line)} characters: {line[:40]}…"
                for number, cell in enumerate(code_cells(path))
                for line_number, line in enumerate(cell.source.splitlines(), start=1)
                if len(line) > MAX_LINE]
    if too_long:
        pytest.fail(f"{len(too_long)} code lines longer than {MAX_LINE} characters:\n" + "\n".join(too_long),
                    pytrace=False)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_id)
def test_notebook_is_committed_without_outputs_or_execution_counts(path):
    stored = [f"cell {number}: {len(cell.outputs)} outputs, execution count {cell.execution_count}"
              for number, cell in enumerate(code_cells(path))
              if cell.outputs or cell.execution_count is not None]
    if stored:
        pytest.fail("cells with stored results (run nbstripout):\n" + "\n".join(stored), pytrace=False)
