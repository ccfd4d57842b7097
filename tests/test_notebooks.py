"""Every notebook: committed without outputs, cells parse, a literal parameters cell first,
and it runs top to bottom on the small default model. New notebooks join automatically;
a notebook that needs a fixture (a local hub, a server) names it in NOTEBOOK_FIXTURES."""
from __future__ import annotations

import ast

import nbformat
import pytest

from nbrun import NOTEBOOKS, cell_text, parameters, run_notebook

ALL = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
# notebook stem -> name of a fixture that returns parameter overrides for it
NOTEBOOK_FIXTURES = {
    "02_download": "notebook02_params",
}
# notebook stem -> name of a fixture that returns check(nb, text), called after the run
NOTEBOOK_CHECKS = {
    "02_download": "notebook02_check",
}


def test_there_are_notebooks():
    assert ALL, "notebooks/ holds no numbered notebooks"


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.stem)
def test_notebook_is_clean(path):
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert not cell.get("outputs"), f"cell {i} of {path.name} has committed outputs"
        assert cell.get("execution_count") is None, f"cell {i} of {path.name} has an execution count"
        src = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))
        ast.parse(src)  # raises SyntaxError naming the line
    parameters(nb)  # first code cell is literal parameters
    first = nb.cells[0]
    assert first.cell_type == "markdown" and "#" in first.source, "open with what the notebook teaches"


@pytest.mark.slow
@pytest.mark.parametrize("path", ALL, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, request, tmp_path):
    fixture = NOTEBOOK_FIXTURES.get(path.stem)
    overrides = request.getfixturevalue(fixture) if fixture else {}
    nb = run_notebook(path, **overrides)
    text = cell_text(nb)
    assert "Traceback" not in text
    if path.stem in NOTEBOOK_CHECKS:
        request.getfixturevalue(NOTEBOOK_CHECKS[path.stem])(nb, text)
