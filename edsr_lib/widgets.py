"""Interactive views for JupyterLab (ipywidgets). Each has a static counterpart in `figures`, which the notebooks
show first, so headless runs and static renderings still carry the picture.

The controls are widgets; the pictures they drive are ordinary image outputs replaced in place (IPython's
`display_id`). A saved notebook therefore keeps the last picture a user looked at, and its HTML export shows it,
while the controls themselves need a running kernel.
"""

import io
import os
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import KitError
from .degradations import bicubic_lr, modcrop
from .evaluation import bicubic_upscale
from .figures import crop_box, figure_png, labelled_wipe, plot_comparison, wipe_zoom
from .files import atomic_write
from .images import read_image, to_uint8
from .inference import upscale
from .metrics import crop_border, psnr, ssim

CONTROLS_NOTE = "(interactive controls: they need a running kernel; the pictures below show their last state)"


def _png_bytes(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")  # PNG: what the slider shows is the exact pixels
    return buffer.getvalue()


def show_controls(widget):
    """Display a widget with a text fallback that says what it is, instead of ipywidgets' `VBox(children=...`,
    for renderers without the widget (an HTML export, a notebook reopened without its kernel)."""
    from IPython.display import display

    bundle = widget._repr_mimebundle_()
    bundle["text/plain"] = CONTROLS_NOTE
    display(bundle, raw=True)


class Comparison:
    """HR, bicubic and every method's output for the images of a dataset (and for photos added with `add_photo`),
    each (image, method) computed once, on demand: any choice of methods reuses what was computed for another.
    `models`: name -> a loaded model, or a checkpoint path loaded when first shown. `lpips`: an `lpips.LPIPS`,
    whose distance then follows PSNR and SSIM in each score (RGB, on the protocol's border crop)."""

    def __init__(self, dataset, models, protocol, cache_size=8, lpips=None):
        self.dataset, self.protocol, self.lpips = dataset, protocol, lpips
        self.methods = {"bicubic": None, **models}
        self.photos = {}  # name -> (lr, hr or None)
        # the `cache_size` images seen last: their LR/HR and, filled in as methods are asked for, SR images and scores
        self._outputs = lru_cache(maxsize=cache_size)(self._record)

    @property
    def names(self):
        return list(self.dataset.names) + list(self.photos)

    def model(self, name):
        from .loading import load_model

        if isinstance(self.methods[name], (str, Path)):
            self.methods[name] = load_model(self.methods[name], default_scale=self.dataset.scale)
            if self.methods[name].arch.scale != self.dataset.scale:
                raise KitError(
                    f"{name}: an x{self.methods[name].arch.scale} model, the comparison is x{self.dataset.scale}"
                )
        return self.methods[name]

    def add_photo(self, name, image, as_lr=False):
        """A user's photo: as HR (its LR made with MATLAB bicubic, scores computed) or used directly as LR."""
        if as_lr:
            self.photos[name] = (image, None)
        else:
            self.photos[name] = (bicubic_lr(image, self.dataset.scale), modcrop(image, self.dataset.scale))
        self._outputs.cache_clear()
        return name

    def pair(self, index):
        if index < len(self.dataset):
            return tuple(np.asarray(a) for a in self.dataset.pair(index))
        return self.photos[self.names[index]]

    def outputs(self, index, methods=None):
        """(HR or None, {method: SR image}, {method: (PSNR, SSIM[, LPIPS])}) for image `index` and `methods`
        (default all)."""
        record = self._outputs(index)
        methods = tuple(methods or self.methods)
        for m in methods:
            if m not in record["images"]:
                lr, hr = record["lr"], record["hr"]
                sr = bicubic_upscale(lr, self.dataset.scale) if m == "bicubic" else upscale(self.model(m), lr)
                record["images"][m] = sr
                if hr is not None:
                    record["scores"][m] = (psnr(sr, hr, self.protocol), ssim(sr, hr, self.protocol))
                    if self.lpips is not None:
                        border = self.protocol.border
                        distance = self.lpips(crop_border(sr, border), crop_border(hr, border))
                        record["scores"][m] += (distance,)
        scores = {m: record["scores"][m] for m in methods if m in record["scores"]}
        return record["hr"], {m: record["images"][m] for m in methods}, scores

    def _record(self, index):
        lr, hr = self.pair(index)
        return {"lr": lr, "hr": hr, "images": {}, "scores": {}}

    def figure(self, index, center=None, size=64, methods=None):
        hr, images, scores = self.outputs(index, methods)
        shape = next(iter(images.values())).shape
        center = center or (shape[0] // 2, shape[1] // 2)
        return plot_comparison(
            hr, images, crop_box(shape, center, size), scores, title=f"{self.names[index]} x{self.dataset.scale}"
        )


class ComparisonExplorer:
    """Pick the image (or upload a photo), the methods and the crop; see the comparison and a 2x wipe of the crop
    between any two methods. `show()` displays the controls and the two pictures."""

    def __init__(self, comparison, size=64, main="EDSR", upload_dir="outputs/uploads"):
        import ipywidgets as w

        self.comparison, self.upload_dir = comparison, Path(upload_dir)
        methods = list(comparison.methods)
        main = main if main in methods else methods[-1]
        self.image = w.Dropdown(options=self._image_options(), description="image")
        self.methods = w.SelectMultiple(
            options=methods,
            value=tuple(dict.fromkeys(["bicubic", main])),
            rows=min(4, len(methods)),
            description="methods",
        )
        self.y = w.FloatSlider(0.5, min=0, max=1, step=0.01, description="crop y")
        self.x = w.FloatSlider(0.5, min=0, max=1, step=0.01, description="crop x")
        self.crop = w.IntSlider(size, min=16, max=256, step=8, description="crop px")
        self.left = w.Dropdown(options=methods, value="bicubic", description="wipe left")
        self.right = w.Dropdown(options=methods, value=main, description="wipe right")
        self.split = w.FloatSlider(0.5, min=0, max=1, step=0.01, description="wipe")
        self.upload = w.FileUpload(accept="image/*", multiple=False, description="your photo")
        self.photo_is = w.ToggleButtons(
            options=[("HR (LR by bicubic)", False), ("LR (as it is)", True)], value=False, description="photo"
        )
        self.status = w.HTML()
        self._handles = None
        self._pictures = None  # the pictures as widgets (under Voilà)
        for control in (self.image, self.methods, self.y, self.x, self.crop):
            control.observe(self.redraw, names="value")
        for control in (self.left, self.right, self.split):
            control.observe(self.redraw_wipe, names="value")
        self.upload.observe(self._on_upload, names="value")
        self.controls = w.VBox(
            [
                w.HBox([self.image, self.methods]),
                w.HBox([self.y, self.x, self.crop]),
                w.HBox([self.left, self.right, self.split]),
                w.HBox([self.upload, self.photo_is]),
                self.status,
            ]
        )

    def _image_options(self):
        return list(zip(self.comparison.names, range(len(self.comparison.names))))

    def _center(self, shape):
        return int(self.y.value * shape[0]), int(self.x.value * shape[1])

    def _set_status(self, text):
        self.status.value = f"<span style='font-size: 110%'>{text}</span>"

    def _box(self, shape):
        return crop_box(shape, self._center(shape), self.crop.value)

    def comparison_png(self):
        """The comparison figure for the current image, methods and crop, as PNG."""
        methods = self.methods.value or ("bicubic",)
        hr, images, _ = self.comparison.outputs(self.image.value, methods)
        shape = next(iter(images.values())).shape
        return figure_png(self.comparison.figure(self.image.value, self._center(shape), self.crop.value, methods))

    def wipe_png(self):
        """The labelled wipe between the two chosen sides on the current crop, as PNG."""
        left, right = self.left.value, self.right.value
        _, images, _ = self.comparison.outputs(self.image.value, (left, right))
        box = self._box(images[left].shape)
        wipe = labelled_wipe(images[left], images[right], self.split.value, box, wipe_zoom(self.crop.value),
                             (left, right))  # fmt: skip
        return _png_bytes(wipe)

    def _update(self, comparison_too=True):
        from IPython.display import Image as ShownImage

        start = time.perf_counter()
        self._set_status("computing…")
        try:  # a wipe move redraws only the wipe: the comparison figure costs a matplotlib render
            figure = self.comparison_png() if comparison_too else None
            wipe = self.wipe_png()
        except KitError as exc:
            self._set_status(f"error: {exc}")
            return
        if self._pictures:
            if figure is not None:
                self._pictures[0].value = figure
            self._pictures[1].value = wipe
        elif self._handles and None not in self._handles:  # (display returns None outside a kernel)
            if figure is not None:
                self._handles[0].update(ShownImage(data=figure))
            self._handles[1].update(ShownImage(data=wipe))
        self._set_status(f"{self.comparison.names[self.image.value]}: shown in {time.perf_counter() - start:.1f} s")

    def redraw(self, _=None):
        self._update(comparison_too=True)

    def redraw_wipe(self, _=None):
        self._update(comparison_too=False)

    def add_photo(self, name, data, as_lr=False):
        """Add an uploaded photo (its bytes) and show it; the file is kept under `upload_dir`."""
        path = atomic_write(self.upload_dir / Path(name).name, lambda tmp: Path(tmp).write_bytes(data))
        try:
            image, _ = read_image(path)
        except KitError:
            path.unlink()
            raise
        self.comparison.add_photo(path.name, to_uint8(image), as_lr)  # a 16-bit PNG scaled, never wrapped
        self.image.options = self._image_options()
        self.image.value = len(self.comparison.names) - 1  # triggers a redraw

    def _on_upload(self, change):
        files = change["new"]
        if not files:
            return
        item = files[0] if isinstance(files, (list, tuple)) else next(iter(files.values()))
        try:
            self.add_photo(item["name"], bytes(item["content"]), self.photo_is.value)
        except KitError as exc:
            self._set_status(f"error: {exc}")

    def show(self):
        from IPython.display import Image as ShownImage, display

        show_controls(self.controls)
        figure, wipe = self.comparison_png(), self.wipe_png()
        # Voilà (which sets VOILA_KERNEL_ID in its kernels) renders ordinary outputs once on the server, so there the
        # pictures are widgets; in Jupyter they are outputs, which a saved notebook keeps as they were last shown.
        if "VOILA_KERNEL_ID" in os.environ:
            import ipywidgets as w

            self._pictures = [w.Image(value=png, format="png") for png in (figure, wipe)]
            show_controls(w.VBox(self._pictures))
            self._set_status(f"{self.comparison.names[self.image.value]}: ready")
            return
        self._handles = (
            display(ShownImage(data=figure), display_id=True),
            display(ShownImage(data=wipe), display_id=True),
        )
        self._set_status(f"{self.comparison.names[self.image.value]}: ready")


def comparison_explorer(comparison, size=64, main="EDSR"):
    """Build the explorer and show it (the notebooks' one-liner)."""
    explorer = ComparisonExplorer(comparison, size, main)
    explorer.show()
    return explorer
