"""Build the notebooks in notebooks/ from their one source: tools/notebooks/nb*.py.

Each source module defines `NOTEBOOKS = {stem: cells}`, cells being ("md" | "code", source)
pairs; one module may describe several notebooks (nb04_05.py). Notebooks are written without
outputs, with stable cell ids, and the first code cell tagged `parameters` (papermill's
convention, which tests/nbrun.py and the notebooks' own tests rely on).

    python tools/nb.py            # regenerate every notebook in notebooks/
    python tools/nb.py --check    # exit 1 naming the notebooks that differ from their source
    python tools/nb.py --out DIR  # write them somewhere else (the tests do this)
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import nbformat

__all__ = ["REPO", "SOURCES_DIR", "NOTEBOOKS_DIR", "build", "write", "sources", "generate", "differences"]

REPO = Path(__file__).resolve().parent.parent
SOURCES_DIR = REPO / "tools" / "notebooks"
NOTEBOOKS_DIR = REPO / "notebooks"

Cells = list[tuple[str, str]]


def build(stem: str, cells: Cells) -> nbformat.NotebookNode:
    """The notebook `stem` (e.g. "01_build_check") made of `cells`, validated."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    first_code = True
    for kind, src in cells:
        src = src.strip("\n")
        if kind == "md":
            nb.cells.append(nbformat.v4.new_markdown_cell(src))
        elif kind == "code":
            cell = nbformat.v4.new_code_cell(src)
            if first_code:
                cell.metadata["tags"] = ["parameters"]
                first_code = False
            nb.cells.append(cell)
        else:
            raise ValueError(f"{stem}: cell kind {kind!r} is neither 'md' nor 'code'")
    for i, c in enumerate(nb.cells):  # stable ids keep diffs small
        c["id"] = f"{stem[:2]}-{i:02d}"
    nbformat.validate(nb)
    return nb


def write(path: str | Path, cells: Cells) -> Path:
    """Write the notebook made of `cells` to `path` (its stem names it)."""
    path = Path(path)
    path.write_text(nbformat.writes(build(path.stem, cells)) + "\n")
    return path


def _load(source: Path) -> dict[str, Cells]:
    spec = importlib.util.spec_from_file_location(f"_nb_source_{source.stem}", source)
    if spec is None or spec.loader is None:
        raise ValueError(f"{source} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    notebooks = getattr(module, "NOTEBOOKS", None)
    if not isinstance(notebooks, dict) or not notebooks:
        raise ValueError(f"{source} defines no NOTEBOOKS = {{stem: cells}}")
    return notebooks


def sources(directory: Path = SOURCES_DIR) -> dict[str, tuple[Path, Cells]]:
    """Every notebook stem -> (the source file describing it, its cells).

    A stem described by two source files is an error: each notebook has exactly one source."""
    found: dict[str, tuple[Path, Cells]] = {}
    for source in sorted(directory.glob("nb*.py")):
        for stem, cells in _load(source).items():
            if stem in found:
                raise ValueError(f"notebook {stem} is described by both {found[stem][0].name} and {source.name}")
            found[stem] = (source, cells)
    return found


def generate(out_dir: Path = NOTEBOOKS_DIR) -> list[Path]:
    """Write every notebook from its source into `out_dir`; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [write(out_dir / f"{stem}.ipynb", cells) for stem, (_, cells) in sources().items()]


def differences(committed_dir: Path = NOTEBOOKS_DIR) -> list[str]:
    """One line per notebook in `committed_dir` that differs from its source (empty: all match)."""
    committed_dir = Path(committed_dir)
    expected = sources()
    lines = []
    for path in sorted(committed_dir.glob("[0-9][0-9]_*.ipynb")):
        if path.stem not in expected:
            lines.append(f"{path.name}: no source in tools/notebooks/ describes it")
    for stem, (source, cells) in expected.items():
        path = committed_dir / f"{stem}.ipynb"
        if not path.exists():
            lines.append(f"{path.name}: described by {source.name} but not in {committed_dir.name}/")
        elif path.read_text() != nbformat.writes(build(stem, cells)) + "\n":
            lines.append(f"{path.name}: differs from {source.name}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=NOTEBOOKS_DIR, help="folder to write into (default: notebooks/)")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a committed notebook differs")
    args = ap.parse_args(argv)
    if args.check:
        diffs = differences(args.out)
        print("\n".join(diffs) or "every notebook matches its source")
        if diffs:
            print("regenerate with: python tools/nb.py", file=sys.stderr)
        return 1 if diffs else 0
    for path in generate(args.out):
        print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
