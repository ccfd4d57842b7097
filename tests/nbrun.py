"""Run a notebook top to bottom the way a person would, with its parameters overridden.

The first code cell of every notebook is tagged `parameters` and holds plain literals; the
overrides go into a cell inserted right after it (papermill's convention)."""
from __future__ import annotations

import ast
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def parameters_cell_index(nb) -> int:
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            if "parameters" not in cell.metadata.get("tags", []):
                raise AssertionError("the first code cell must be tagged 'parameters'")
            return i
    raise AssertionError("notebook has no code cell")


def parameters(nb) -> dict:
    """The literal values of the parameters cell (it must hold only `name = literal`)."""
    cell = nb.cells[parameters_cell_index(nb)]
    out = {}
    for node in ast.parse(cell.source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)):
            raise AssertionError(f"parameters cell may only assign literals: {ast.unparse(node)}")
        out[node.targets[0].id] = ast.literal_eval(node.value)
    return out


def run_notebook(path: Path, timeout: int = 600, cwd: Path | None = None, **overrides):
    nb = nbformat.read(str(path), as_version=4)
    idx = parameters_cell_index(nb)
    unknown = set(overrides) - set(parameters(nb))
    assert not unknown, f"{path.name} has no parameter(s) {unknown}"
    if overrides:
        src = "# injected by the test suite\n" + "\n".join(f"{k} = {v!r}" for k, v in overrides.items())
        nb.cells.insert(idx + 1, nbformat.v4.new_code_cell(src))
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd or path.parent)}})
    client.execute()
    return nb


def cell_text(nb) -> str:
    """All text the executed notebook printed or displayed, for assertions."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if "text" in out:
                parts.append(out["text"])
            for key in ("text/plain", "text/markdown", "text/html"):
                if key in out.get("data", {}):
                    parts.append(out["data"][key])
    return "\n".join(parts)
