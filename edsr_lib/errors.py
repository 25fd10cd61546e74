"""The one exception type for user mistakes: the CLI prints it as one line and exits non-zero."""

import argparse
import contextlib
import signal
import threading
from pathlib import Path


class KitError(Exception):
    """A problem with the user's input (file, option, checkpoint) rather than a bug in the kit."""


def describe_os_error(exc, path=None):
    """One line for an OSError: the path it concerns and what went wrong. `path`, the file being written, stands in
    for a hidden temporary name, or for none at all (a write on an open file, e.g. disk full, names no file)."""
    name = exc.filename
    if path is not None and (name is None or Path(name).name.startswith(".")):
        name = path
    if isinstance(exc, (FileExistsError, NotADirectoryError)) and name:  # a file stands where a folder must be
        blocking = next((p for p in [Path(name), *Path(name).parents] if p.is_file()), None)
        if blocking is not None:
            return f"{blocking}: is a file, not a folder"
    return f"{name}: {exc.strerror or exc}" if name else str(exc.strerror or exc)


def write_error(path, exc):
    """An OSError while writing `path`, as a KitError naming it."""
    text = describe_os_error(exc, path)
    return KitError(text if text.startswith(str(path)) else f"{text} (writing {path})")


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, with a usage mistake reported in one line like every other user error (exit 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


@contextlib.contextmanager
def sigterm_interrupts():
    """MindSpore answers Ctrl-C (SIGINT) while it runs graphs by sending the process SIGTERM, which would end it on
    the spot: no KeyboardInterrupt, a dead notebook kernel, exit 143. Inside this block SIGTERM raises
    KeyboardInterrupt instead, so locks are released, a notebook cell just stops and the CLI exits 130; files are
    written atomically, so the last complete ones stay intact. Outside the main thread it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
