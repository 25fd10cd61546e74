"""Running the notebooks headlessly with papermill: where they are, their parameters (`-p NAME VALUE`, checked against
what the notebooks take), and one notebook's execution with a kernel manager patient enough for data-parallel ranks."""

import contextlib
import json
import os
import sys
from pathlib import Path

from ..errors import KitError


NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"


TRAIN, EVALUATE, COMPARE = "02_train.ipynb", "03_evaluate.ipynb", "04_visual_comparison.ipynb"


def notebook_path(name):
    path = NOTEBOOK_DIR / name
    if not path.is_file():
        raise KitError(f"{path}: notebook not found (the notebooks ship with the source checkout)")
    return path


MAX_PARAMETER_CHARS = 10_000


def parse_parameters(pairs):
    """['-p', 'epochs', '3', ...] pairs -> {'epochs': 3}: values are read as JSON when they parse, else strings."""
    params = {}
    for name, text in pairs:
        if len(text) > MAX_PARAMETER_CHARS:
            raise KitError(f"-p {name}: value longer than {MAX_PARAMETER_CHARS} characters")
        try:
            params[name] = json.loads(text)
        except json.JSONDecodeError:
            params[name] = text
        except RecursionError:
            raise KitError(f"-p {name}: value nested too deeply") from None
    return params


def check_parameter_names(params, notebooks):
    """Refuse a -p name that no notebook of the job takes (a typo like `epoch` would otherwise be ignored)."""
    import difflib

    from dataclasses import fields

    from ..options import Options

    known = set()
    for name in notebooks:
        known |= set(notebook_defaults(name))
        if name == TRAIN:  # the training notebook builds its Options from every variable (injected ones too)
            known |= {f.name for f in fields(Options)}
    known |= {"progress", "output_dir", "checkpoint", "interactive"}  # set by the launchers themselves
    for name in params:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise KitError(f"-p {name}: no such parameter of {', '.join(notebooks)}{hint}")


def notebook_defaults(name=TRAIN):
    """The parameters cell of a notebook as values."""
    import ast

    import papermill

    values = {}
    for key, info in papermill.inspect_notebook(str(notebook_path(name))).items():
        with contextlib.suppress(ValueError, SyntaxError):
            values[key] = ast.literal_eval(info["default"])
    return values


def _kernel_manager_class():
    from jupyter_client.manager import AsyncKernelManager

    class PatientKernelManager(AsyncKernelManager):
        # A data-parallel rank's kernel leaves MindSpore's cluster only when every rank is done; the default 5 s
        # before a kill would cut that short and the msrun scheduler would report the rank as failed.
        shutdown_wait_time = 120.0

    return PatientKernelManager


def execute_notebook(name, output_notebook, parameters, log=print):
    """Run one notebook with papermill; a failing cell becomes a one-line KitError naming notebook and cell."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    output_notebook = Path(output_notebook)
    output_notebook.parent.mkdir(parents=True, exist_ok=True)
    log(f"running {name} -> {output_notebook}")
    try:
        papermill.execute_notebook(
            str(notebook_path(name)),
            str(output_notebook),
            parameters=parameters,
            progress_bar=False,
            log_output=True,
            stdout_file=sys.stdout,
            stderr_file=sys.stderr,
            cwd=os.getcwd(),
            kernel_manager_class=_kernel_manager_class(),
        )
    except PapermillExecutionError as exc:
        raise KitError(
            f"{name}: cell {exc.exec_count} failed with {exc.ename}: {exc.evalue.splitlines()[0] if exc.evalue else ''}"
            f" (see {output_notebook})"
        ) from None
    return output_notebook


def read_metrics(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise KitError(f"{path}: missing or unreadable metrics ({exc})") from None
