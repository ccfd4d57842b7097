"""Write a notebook from a compact Python description (cells as ("md"|"code", source)).

Notebooks are committed without outputs; the first code cell is tagged `parameters`."""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat


def write(path: str | Path, cells: list[tuple[str, str]]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    first_code = True
    for kind, src in cells:
        src = src.strip("\n")
        if kind == "md":
            nb.cells.append(nbformat.v4.new_markdown_cell(src))
        else:
            cell = nbformat.v4.new_code_cell(src)
            if first_code:
                cell.metadata["tags"] = ["parameters"]
                first_code = False
            nb.cells.append(cell)
    for i, c in enumerate(nb.cells):  # stable ids keep diffs small
        c["id"] = f"{Path(path).stem[:2]}-{i:02d}"
    nbformat.validate(nb)
    Path(path).write_text(nbformat.writes(nb) + "\n")
    return Path(path)


if __name__ == "__main__":  # pragma: no cover
    print("import tools.nb and call write(path, cells)", file=sys.stderr)
