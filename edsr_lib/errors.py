"""The one exception type for user mistakes: the CLI prints it as one line and exits non-zero."""


class KitError(Exception):
    """A problem with the user's input (file, option, checkpoint) rather than a bug in the kit."""
