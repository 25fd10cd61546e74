"""`edsr compare`: a static comparison report that opens from disk in any browser (no server, no network).

index.html: one row per image, one column per method, the scores `edsr eval` computes with the best per row marked,
sortable, the mean per method and the protocol. images/NNN.html: every method on one synchronised view (zoom and
pan move every panel, pixels unsmoothed), a before/after wipe between any two methods, a crop box to jump to, and
the full-size lossless PNGs. Images are processed one at a time; the report is built in a temporary folder and
renamed into place, and the same inputs give the same files.
"""

import html
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .errors import KitError
from .evaluation import bicubic_upscale, score_image
from .files import OUTPUT_MARKER, prepare_output_folder, sweep_work_folders, work_folder
from .images import write_image
from .metrics import LOWER_IS_BETTER, Protocol
from .progress import progress_bar

STYLE = """
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; } th, td { padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: right; }
th { cursor: pointer; background: #f4f4f4; user-select: none; } td:first-child, th:first-child { text-align: left; }
td.best { font-weight: bold; color: #064; } tr.mean td { border-top: 2px solid #888; font-weight: 600; }
.panels { display: flex; flex-wrap: wrap; gap: 8px; }
.panel { width: 300px; } .panel .view { width: 300px; height: 300px; overflow: hidden; position: relative;
  background: #111; cursor: grab; } .panel img, .wipe img { position: absolute; left: 0; top: 0;
  transform-origin: 0 0; image-rendering: pixelated; max-width: none; }
.wipe { width: 612px; height: 400px; overflow: hidden; position: relative; background: #111; }
.wipe .after { clip-path: inset(0 0 0 50%); } .divider { position: absolute; top: 0; bottom: 0; width: 2px;
  background: #fff; left: 50%; pointer-events: none; }
.controls { margin: 0.8em 0; } .controls label { margin-right: 1em; }
"""

INDEX_SCRIPT = """
const table = document.getElementById("scores");
table.querySelectorAll("th").forEach((th, column) => th.addEventListener("click", () => {
  const body = table.tBodies[0], rows = Array.from(body.rows);
  const up = th.dataset.order !== "up";
  table.querySelectorAll("th").forEach(h => delete h.dataset.order);
  th.dataset.order = up ? "up" : "down";
  const key = r => column === 0 ? r.cells[0].textContent : parseFloat(r.cells[column].dataset.value);
  rows.sort((a, b) => { const x = key(a), y = key(b); return (x < y ? -1 : x > y ? 1 : 0) * (up ? 1 : -1); });
  rows.forEach(r => body.appendChild(r));
}));
"""

PAGE_SCRIPT = """
const data = JSON.parse(document.getElementById("data").textContent);
const views = Array.from(document.querySelectorAll(".panel .view"));
const state = window.viewState = { zoom: 1, x: 0, y: 0 };
function apply() {
  const z = state.zoom, transform = `translate(${-state.x * z}px, ${-state.y * z}px) scale(${z})`;
  document.querySelectorAll(".panel img, .wipe img").forEach(i => i.style.transform = transform);
}
function zoomAt(factor, px, py) {
  const zoom = Math.min(64, Math.max(0.1, state.zoom * factor));
  state.x += px / state.zoom - px / zoom; state.y += py / state.zoom - py / zoom; state.zoom = zoom; apply();
}
let drag = null;
for (const v of [...views, document.querySelector(".wipe")]) {
  v.addEventListener("wheel", e => { e.preventDefault(); const r = v.getBoundingClientRect();
    zoomAt(e.deltaY < 0 ? 1.25 : 0.8, e.clientX - r.left, e.clientY - r.top); });
  // a drag pans; on the wipe only with shift held (a plain drag there moves the divider)
  v.addEventListener("mousedown", e => {
    if (!v.classList.contains("wipe") || e.shiftKey) drag = { x: e.clientX, y: e.clientY };
  });
}
window.addEventListener("mouseup", () => drag = null);
window.addEventListener("mousemove", e => { if (!drag) return;
  state.x -= (e.clientX - drag.x) / state.zoom; state.y -= (e.clientY - drag.y) / state.zoom;
  drag = { x: e.clientX, y: e.clientY }; apply(); });
document.getElementById("zoom-in").onclick = () => zoomAt(2, 150, 150);
document.getElementById("zoom-out").onclick = () => zoomAt(0.5, 150, 150);
document.getElementById("crop-go").onclick = () => {
  const [y, x, size] = document.getElementById("crop").value.split(",").map(Number);
  state.zoom = 300 / size; state.x = x; state.y = y; apply();
};
const wipe = document.querySelector(".wipe"), slider = document.getElementById("wipe-position");
function setWipe(percent) {
  percent = Math.min(100, Math.max(0, percent)); slider.value = percent;
  wipe.querySelector(".after").style.clipPath = `inset(0 0 0 ${percent}%)`;
  wipe.querySelector(".divider").style.left = `${percent}%`;
}
slider.addEventListener("input", () => setWipe(Number(slider.value)));
wipe.addEventListener("mousedown", e => { if (e.shiftKey) return; const r = wipe.getBoundingClientRect();
  setWipe(100 * (e.clientX - r.left) / r.width); wipe.dragging = true; });
window.addEventListener("mouseup", () => wipe.dragging = false);
wipe.addEventListener("mousemove", e => { if (!wipe.dragging) return; const r = wipe.getBoundingClientRect();
  setWipe(100 * (e.clientX - r.left) / r.width); });
window.addEventListener("keydown", e => { if (e.key === "ArrowLeft") setWipe(Number(slider.value) - 5);
  if (e.key === "ArrowRight") setWipe(Number(slider.value) + 5); });
for (const side of ["before", "after"]) {
  document.getElementById(`wipe-${side}`).addEventListener("change", e => {
    wipe.querySelector(`.${side}`).src = data.files[e.target.value]; });
}
apply();
"""


def _method_file(label):
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
    return f"{keep}.png"


def build_report(
    images: Iterable,
    scale: int,
    methods: dict,
    out: str | os.PathLike,
    protocol: Protocol,
    metrics: Sequence[str] = ("psnr", "ssim"),
    lpips: dict | None = None,
    progress: bool | str = True,
    inputs: Iterable = (),
) -> dict:
    """Write the report to `out` (replaced atomically). `images`: (name, LR, HR or None) per image, read one at a
    time; `methods`: label -> model (None: bicubic); `inputs`: (path, what it is) that `out` may not overwrite.
    Returns {"images": [...], "methods", "means", ...}."""
    out = Path(out)
    prepare_output_folder(out, "--out", inputs)  # before any work: no input, no folder of someone else's files
    sweep_work_folders(out)  # what a killed run left: built aside, never renamed into place
    work = work_folder(out)
    shutil.rmtree(work, ignore_errors=True)
    (work / "images").mkdir(parents=True)
    rows = []
    try:
        for index, (name, lr, hr) in enumerate(progress_bar(images, "compare", progress, unit="img")):
            rows.append(_image_page(work, index, name, lr, hr, scale, methods, protocol, metrics, lpips))
        summary = _summary(rows, list(methods), protocol, scale, metrics)
        (work / "index.html").write_text(_index_html(summary))
        (work / "report.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
        (work / OUTPUT_MARKER).touch()
        old = work_folder(out, "old-")
        if out.exists():
            out.rename(old)
        work.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return summary


def _image_page(work, index, name, lr, hr, scale, methods, protocol, metrics, lpips):
    from .inference import upscale

    folder = work / "images" / f"{index:03d}"
    files, scores = {}, {}
    if hr is not None:
        write_image(folder / "HR.png", hr)
        files["HR"] = f"{index:03d}/HR.png"
    for label, model in methods.items():
        sr = bicubic_upscale(lr, scale) if model is None else upscale(model, lr)
        if hr is not None and sr.shape != hr.shape:
            raise KitError(f"{name}: {label} gives {sr.shape[1]}x{sr.shape[0]}, HR is {hr.shape[1]}x{hr.shape[0]}")
        write_image(folder / _method_file(label), sr)
        files[label] = f"{index:03d}/{_method_file(label)}"
        scores[label] = score_image(sr, hr, protocol, metrics, lpips)
    page = _page_html(index, name, files, scores, np.asarray(lr).shape, scale)
    (work / "images" / f"{index:03d}.html").write_text(page)
    return {"name": name, "page": f"images/{index:03d}.html", "files": files, "scores": scores}


def _summary(rows, labels, protocol, scale, metrics):
    shown = [m for m in metrics if any(m in r["scores"][label] for r in rows for label in labels)]
    means = {label: {m: float(np.mean([r["scores"][label][m] for r in rows])) for m in shown} for label in labels}
    return {
        "scale": scale,
        "protocol": protocol.describe(),
        "methods": labels,
        "metrics": shown,
        "lower_is_better": [m for m in shown if m in LOWER_IS_BETTER],
        "images": rows,
        "means": means,
    }


def _best(values, metric):
    pick = min if metric in LOWER_IS_BETTER else max
    return pick(values.values()) if values else None


def _index_html(summary):
    labels, metrics = summary["methods"], summary["metrics"]
    head = "".join(f"<th>{html.escape(label)} {m.upper()}</th>" for label in labels for m in metrics)
    body = []
    for row in summary["images"]:
        cells = []
        for m in metrics:
            best = _best({label: row["scores"][label][m] for label in labels}, m)
            for label in labels:
                value = row["scores"][label][m]
                mark = ' class="best"' if value == best and len(labels) > 1 else ""
                cells.append((labels.index(label), m, f'<td{mark} data-value="{value!r}">{value:.4f}</td>'))
        ordered = "".join(c for _, _, c in sorted(cells, key=lambda c: (c[0], metrics.index(c[1]))))
        link = f'<a href="{row["page"]}">{html.escape(row["name"])}</a>'
        body.append(f'<tr><td data-value="{html.escape(row["name"])}">{link}</td>{ordered}</tr>')
    means = "".join(f"<td>{summary['means'][label][m]:.4f}</td>" for label in labels for m in metrics)
    lower = ", ".join(m.upper() for m in summary["lower_is_better"])
    return _document(
        f"Comparison x{summary['scale']}",
        f"""<h1>Comparison x{summary["scale"]}</h1>
<p>Protocol: {html.escape(summary["protocol"])} (as <code>edsr eval</code>; outputs clamped and rounded to 8 bits).
The best value per image and metric is in bold{"; lower is better for " + lower if lower else ""}.
Click a column to sort; click an image to compare it.</p>
<table id="scores"><thead><tr><th>image</th>{head}</tr></thead>
<tbody>{"".join(body)}</tbody>
<tfoot><tr class="mean"><td>mean</td>{means}</tr></tfoot></table>
<script>{INDEX_SCRIPT}</script>""",
    )


def _page_html(index, name, files, scores, lr_shape, scale):
    rel = {label: Path(path).name for label, path in files.items()}
    panels = []
    for label, file in rel.items():
        score = scores.get(label, {})
        text = " / ".join(f"{m.upper()} {v:.4f}" for m, v in score.items())
        panels.append(
            f'<div class="panel" data-method="{html.escape(label)}"><div class="view">'
            f'<img src="{index:03d}/{file}" alt="{html.escape(label)}"></div>'
            f'<div><a href="{index:03d}/{file}">{html.escape(label)}</a> {text}</div></div>'
        )
    methods = [label for label in rel if label != "HR"]
    before, after = methods[0], methods[-1]

    def options(chosen):
        return "".join(
            f"<option{' selected' if label == chosen else ''}>{html.escape(label)}</option>" for label in rel
        )

    data = json.dumps({"files": {label: f"{index:03d}/{file}" for label, file in rel.items()}}, sort_keys=True)
    height, width = lr_shape[0] * scale, lr_shape[1] * scale
    return _document(
        name,
        f"""<p><a href="../index.html">all images</a></p><h1>{html.escape(name)}</h1>
<p>{width}x{height}. Scroll to zoom, drag to pan: every panel follows. Pixels are shown unsmoothed.</p>
<div class="controls"><button id="zoom-in">zoom in</button> <button id="zoom-out">zoom out</button>
<label>crop y,x,size <input id="crop" value="{height // 2 - 32},{width // 2 - 32},64" size="12"></label>
<button id="crop-go">show crop</button></div>
<div class="panels">{"".join(panels)}</div>
<h2>Before / after</h2>
<div class="controls"><label>left <select id="wipe-before">{options(before)}</select></label>
<label>right <select id="wipe-after">{options(after)}</select></label>
<input id="wipe-position" type="range" min="0" max="100" value="50"> (drag on the picture, or the arrow keys)</div>
<div class="wipe"><img class="before" src="{index:03d}/{rel[before]}" alt="before">
<img class="after" src="{index:03d}/{rel[after]}" alt="after"><div class="divider"></div></div>
<script type="application/json" id="data">{data}</script>
<script>{PAGE_SCRIPT}</script>""",
    )


def _document(title, body):
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )
