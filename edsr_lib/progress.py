"""Progress bars: widget bars in an interactive notebook, plain throttled lines in terminals and headless runs."""
import sys

PROGRESS_MODES = ("auto", "text", "none")
# Headless logs (papermill, batch jobs) get one line per this many seconds instead of a bar redrawn per step.
TEXT_INTERVAL_SECONDS = 30.0


def progress_bar(total=None, desc="", mode="auto", **kwargs):
    """tqdm bar for `mode`: auto = widget bar in Jupyter, terminal bar otherwise; text = plain, throttled lines
    (what papermill runs pass); none = silent; True/False mean auto/none. `total` may also be an iterable to wrap."""
    if isinstance(mode, bool):
        mode = "auto" if mode else "none"
    if mode not in PROGRESS_MODES:
        raise ValueError(f"progress must be one of {', '.join(PROGRESS_MODES)}, got {mode!r}")
    iterable, total = (None, total) if total is None or isinstance(total, int) else (total, None)
    if mode == "text":
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, file=sys.stdout, mininterval=TEXT_INTERVAL_SECONDS,
                    maxinterval=TEXT_INTERVAL_SECONDS, ascii=True, dynamic_ncols=False, ncols=100, **kwargs)
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=mode == "none", mininterval=1.0, **kwargs)
