"""Interactive views for JupyterLab (ipywidgets). Each has a static counterpart in `figures`, which the notebooks
show first, so headless runs and static renderings still carry the picture."""
import io
from functools import lru_cache

import numpy as np
from PIL import Image

from .evaluation import bicubic_upscale
from .figures import before_after, figure_png, crop_box, plot_comparison
from .inference import upscale
from .metrics import psnr, ssim


def _png_bytes(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")  # PNG: what the slider shows is the exact pixels
    return buffer.getvalue()


class Comparison:
    """HR, bicubic and every model's output for the images of a dataset, computed once per image on demand."""

    def __init__(self, dataset, models, protocol, cache_size=8):
        self.dataset, self.models, self.protocol = dataset, dict(models), protocol
        self.outputs = lru_cache(maxsize=cache_size)(self._outputs)

    def _outputs(self, index):
        lr, hr = (np.asarray(a) for a in self.dataset.pair(index))
        images = {"bicubic": bicubic_upscale(lr, self.dataset.scale)}
        images.update({name: upscale(model, lr) for name, model in self.models.items()})
        scores = {name: (psnr(img, hr, self.protocol), ssim(img, hr, self.protocol)) for name, img in images.items()}
        return hr, images, scores

    def figure(self, index, center=None, size=64):
        hr, images, scores = self.outputs(index)
        center = center or (hr.shape[0] // 2, hr.shape[1] // 2)
        return plot_comparison(hr, images, crop_box(hr.shape, center, size), scores,
                               title=f"{self.dataset.names[index]} x{self.dataset.scale}")


def comparison_explorer(comparison, size=64):
    """Pick the image and move the crop; the figure redraws below the controls."""
    import ipywidgets as w
    from IPython.display import Image as ShownImage, display

    names = comparison.dataset.names
    image = w.Dropdown(options=list(zip(names, range(len(names)))), description="image")
    y = w.FloatSlider(0.5, min=0, max=1, step=0.01, description="crop y")
    x = w.FloatSlider(0.5, min=0, max=1, step=0.01, description="crop x")
    crop = w.IntSlider(size, min=16, max=256, step=8, description="crop px")
    out = w.Output()

    def redraw(_=None):
        hr = comparison.outputs(image.value)[0]
        fig = comparison.figure(image.value, (int(y.value * hr.shape[0]), int(x.value * hr.shape[1])), crop.value)
        out.clear_output(wait=True)
        with out:
            display(ShownImage(data=figure_png(fig)))

    for control in (image, y, x, crop):
        control.observe(redraw, names="value")
    redraw()
    return w.VBox([w.HBox([image, crop]), w.HBox([y, x]), out])


def before_after_viewer(before, after, width=None):
    """A wipe between two same-size images (e.g. bicubic and EDSR), shown losslessly as PNG."""
    import ipywidgets as w

    slider = w.IntSlider(after.shape[1] // 2, min=0, max=after.shape[1], description="split")
    view = w.Image(value=_png_bytes(before_after(before, after, slider.value)), format="png",
                   width=width or after.shape[1])

    def redraw(change):
        view.value = _png_bytes(before_after(before, after, change["new"]))

    slider.observe(redraw, names="value")
    return w.VBox([slider, view])
