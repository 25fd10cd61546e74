"""The one exception type for user mistakes: the CLI prints it as one line and exits non-zero."""

import argparse
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
