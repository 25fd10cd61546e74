"""A training run's records in its folder: `run.json` (options, versions, device, precision), and `history.csv`
with `curves.png` (rewritten every epoch, so a killed run keeps them)."""

import csv
import io
import platform
import time
from pathlib import Path

from .figures import plot_history, save_figure
from .files import atomic_write, write_json


def versions():
    import mindspore
    import numpy
    import PIL

    from . import __version__

    return {
        "edsr_lib": __version__,
        "mindspore": mindspore.__version__,
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write_run_record(folder, **facts):
    """run.json: `facts` (options, device, precision, ...) with the versions and the start time."""
    record = {**facts, "versions": versions(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return write_json(Path(folder) / "run.json", record)


def write_curves(folder, history, title):
    """history.csv (one row per epoch) and curves.png (loss and validation PSNR) in `folder`."""
    if not history:
        return None
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    atomic_write(Path(folder) / "history.csv", lambda tmp: Path(tmp).write_text(buffer.getvalue()))
    return save_figure(plot_history(history, title), Path(folder) / "curves.png")
