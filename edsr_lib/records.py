"""A training run's records in its folder: `run.json` (options, versions, device, precision), `history.csv`
with `curves.png` (rewritten every epoch, so a killed run keeps them), and TensorBoard event files under `tb/`."""

import contextlib
import csv
import io
import math
import os
import socket
import time
from pathlib import Path

import numpy as np

from .errors import KitError
from .figures import plot_history, save_figure
from .files import atomic_write, process_alive, write_json
from .runtime import versions


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


TENSORBOARD_MODES = ("auto", "on", "off")


class TensorBoardLog:
    """Scalars and images as TensorBoard event files, written with tensorboardX (the `lab` extra).

    mode "auto" writes when tensorboardX is installed and is silently off otherwise; "on" requires it; "off" writes
    nothing. `purge_step`: on resume, the iteration resumed from, so TensorBoard hides what a killed run logged after
    its last checkpoint. Non-finite scalars are left out (TensorBoard draws them as gaps anyway)."""

    def __init__(self, folder, mode="auto", purge_step=None):
        self.writer, self.folder = None, Path(folder)
        if mode == "off":
            return
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            if mode == "on":
                raise KitError(
                    "tensorboard on needs tensorboardX: pip install tensorboardX (or the kit's lab extra)"
                ) from None
            return
        self.writer = SummaryWriter(str(self.folder), purge_step=purge_step, flush_secs=30)

    @property
    def enabled(self):
        return self.writer is not None

    def scalars(self, step, values):
        if self.writer is None:
            return
        for tag, value in values.items():
            if value is not None and math.isfinite(float(value)):
                self.writer.add_scalar(tag, float(value), int(step))

    def image(self, tag, image, step):
        """An HxWx3 uint8 image."""
        if self.writer is not None:
            self.writer.add_image(tag, np.ascontiguousarray(image), int(step), dataformats="HWC")

    def close(self, timeout=30.0):
        """Flush and close, waiting at most `timeout` seconds: after an out-of-memory error tensorboardX's writer
        thread may never finish, and a process must still be able to exit."""
        if self.writer is None:
            return
        import threading

        writer, self.writer = self.writer, None
        closing = threading.Thread(target=writer.close, daemon=True)
        closing.start()
        closing.join(timeout)


@contextlib.contextmanager
def run_lock(folder):
    """One training run at a time per run folder: `.lock` holds the owner's host and pid. A lock left by a process
    that no longer runs on this host (killed) is taken over."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock, me = folder / ".lock", f"{socket.gethostname()} {os.getpid()}"
    for attempt in range(3):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                holder = lock.read_bytes()[:200].decode(errors="replace").strip()
                age = time.time() - lock.stat().st_mtime
            except FileNotFoundError:  # released meanwhile
                continue
            host, _, pid = holder.partition(" ")
            gone = host == socket.gethostname() and pid.isdigit() and not process_alive(int(pid))
            # a lock that never got its owner written (a start on a full disk) or holds garbage: stale once it is
            # older than the instant between creating and writing it
            garbled = not (host and pid.isdigit()) and age > 10
            if attempt < 2 and (gone or garbled):
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            if not (host and pid.isdigit()):
                host, pid = "unknown host", "unknown"
            raise KitError(
                f"{folder}: another training run is using this folder (process {pid} on {host}); "
                f"wait for it, or remove {lock} if it is no longer running"
            ) from None
        with os.fdopen(fd, "w") as f:
            f.write(me)
        break
    else:
        raise KitError(f"{lock}: could not take this run folder's lock; try again")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
