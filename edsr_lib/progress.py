"""Progress bars: a text bar updated in place in a notebook, plain throttled lines in terminals and headless runs.

In a notebook the bar is an ordinary text output replaced in place (IPython's `display_id`), not an ipywidgets
bar: widget bars vanish from a saved notebook once its kernel stops (JupyterLab shows "model not found", an HTML
export shows `0%|` forever), while a text output keeps the final state wherever the notebook is opened.
"""

import sys
import time

PROGRESS_MODES = ("auto", "text", "none")
# Headless logs (papermill, batch jobs) get one line per this many seconds instead of a bar redrawn per step.
TEXT_INTERVAL_SECONDS = 30.0
NOTEBOOK_INTERVAL_SECONDS = 0.5
BAR_FORMAT = "{desc}: {bar:24} {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_noinv_fmt}{postfix}]"
UNBOUNDED_FORMAT = "{desc}: {n_fmt} {unit} [{elapsed}, {rate_noinv_fmt}{postfix}]"


def in_notebook():
    """True inside a Jupyter kernel (JupyterLab, papermill), where outputs are saved with the notebook."""
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def progress_bar(total=None, desc="", mode="auto", **kwargs):
    """A bar for `mode`: auto = the notebook text bar in Jupyter, a terminal bar otherwise; text = plain, throttled
    lines (what papermill runs pass); none = silent; True/False mean auto/none. `total` may also be an iterable."""
    if isinstance(mode, bool):
        mode = "auto" if mode else "none"
    if mode not in PROGRESS_MODES:
        raise ValueError(f"progress must be one of {', '.join(PROGRESS_MODES)}, got {mode!r}")
    iterable, total = (None, total) if total is None or isinstance(total, int) else (total, None)
    if mode == "auto" and in_notebook():
        return NotebookBar(
            iterable,
            total,
            desc,
            unit=kwargs.get("unit", "it"),
            initial=kwargs.get("initial", 0),
            unit_scale=kwargs.get("unit_scale", False),
        )
    from tqdm import tqdm

    if mode == "text":
        return tqdm(
            iterable,
            total=total,
            desc=desc,
            file=sys.stdout,
            mininterval=TEXT_INTERVAL_SECONDS,
            maxinterval=TEXT_INTERVAL_SECONDS,
            ascii=True,
            dynamic_ncols=False,
            ncols=100,
            **kwargs,
        )
    return tqdm(iterable, total=total, desc=desc, disable=mode == "none", mininterval=1.0, **kwargs)


class NotebookBar:
    """The subset of tqdm the kit uses (iteration, update, set_postfix, close), drawn by tqdm's formatter as one text
    line that is replaced in place and always reports a rate in units per second (tqdm flips to s/it below 1 it/s)."""

    def __init__(self, iterable=None, total=None, desc="", unit="it", initial=0, unit_scale=False):
        from IPython.display import display

        self.iterable, self.desc, self.unit, self.unit_scale = iterable, desc, unit, unit_scale
        self.total = total if total is not None or iterable is None else getattr(iterable, "__len__", lambda: None)()
        self.n, self.initial, self.postfix, self.start, self._drawn = initial, initial, "", time.perf_counter(), 0.0
        self._handle = display({"text/plain": self.line()}, raw=True, display_id=True)

    def line(self):
        from tqdm import tqdm

        # tqdm's own formatting, with the rate always in units per second ({rate_noinv_fmt})
        layout = BAR_FORMAT if self.total else UNBOUNDED_FORMAT
        return tqdm.format_meter(self.n, self.total, time.perf_counter() - self.start, prefix=self.desc,
                                 unit=self.unit, unit_scale=self.unit_scale, initial=self.initial,
                                 bar_format=layout, postfix=self.postfix or None)  # fmt: skip

    def _draw(self, force=False):
        now = time.perf_counter()
        if force or now - self._drawn >= NOTEBOOK_INTERVAL_SECONDS:
            self._drawn = now
            self._handle.update({"text/plain": self.line()}, raw=True)

    def update(self, n=1):
        self.n += n
        self._draw(force=self.total is not None and self.n >= self.total)

    def set_postfix(self, refresh=True, **values):
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())
        if refresh:
            self._draw()

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def close(self):
        self._draw(force=True)  # the final state stays in the saved notebook

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
