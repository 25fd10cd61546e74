"""Remove outputs and execution counts from the notebooks before committing (tests/test_notebooks.py checks it).

usage: python scripts/strip_notebooks.py [NOTEBOOK ...]   (default: every notebook under notebooks/)
"""

import sys
from pathlib import Path

import nbformat

paths = [Path(p) for p in sys.argv[1:]] or sorted(Path(__file__).resolve().parents[1].glob("notebooks/**/*.ipynb"))
for path in paths:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
        cell.metadata.pop("papermill", None)
    nb.metadata.pop("papermill", None)
    nbformat.write(nb, path)
    print(f"stripped {path}")
