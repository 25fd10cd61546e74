import http.server
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import edsr_lib.backend  # noqa: F401  (sets the process environment before MindSpore loads)
from edsr_lib.runtime import setup_device

ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = Path(__file__).parent / "data"  # small reference data committed with the tests (see its README)
SHARED_BENCHMARKS = ROOT.parent / "shared" / "data" / "benchmarks"  # larger sets, on the CI machine only
sys.path.insert(0, str(Path(__file__).parent))

setup_device("CPU")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def benchmark_folder(name):
    """A benchmark's HR folder: tests/data (Set5), else ../shared beside the project, else None."""
    for path in (TEST_DATA / name, SHARED_BENCHMARKS / name):
        if path.is_dir():
            return path
    return None


def run_cli(*args):
    """Run `edsr ...` in a subprocess, as a user would; returns CompletedProcess."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "edsr_lib.cli", *map(str, args)], capture_output=True, text=True)


# ---- a local HTTP server with Range support (downloads and weights tests; no real network) --------------


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    files = {}
    drop_after = None  # serve only this many bytes, then close (simulates a broken connection)
    length = "exact"  # exact, none (no Content-Length), or a literal header value
    wrong_offset = False  # answer a Range request with 206 from byte 0
    trickle = None  # seconds between single bytes

    def do_GET(self):
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = 0 if self.wrong_offset else int(rng.split("=")[1].split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        if self.length == "exact":
            self.send_header("Content-Length", str(len(body) - start))
        elif self.length != "none":
            self.send_header("Content-Length", self.length)
        self.end_headers()
        payload = body[start:]
        if self.drop_after is not None:
            payload = payload[: self.drop_after]
        if self.trickle:
            import time

            for i in range(min(len(payload), 20)):
                self.wfile.write(payload[i : i + 1])
                self.wfile.flush()
                time.sleep(self.trickle)
            return
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _RangeHandler.files, _RangeHandler.drop_after = {}, None
    _RangeHandler.length, _RangeHandler.wrong_offset, _RangeHandler.trickle = "exact", False, None
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _RangeHandler
    httpd.shutdown()


def drag_crop_slider(page, pictures, before, attempts=3):
    """Drag the comparison explorer's crop-x slider 70 px (in a Playwright page) and return `pictures()` once they
    have changed from `before` and settled (each step of the drag redraws). A drag that changed nothing within 30 s
    (the page was still settling after scrolling the slider into view) is made again, up to `attempts` times."""
    import time

    after = before
    for _ in range(attempts):
        handle = page.locator(".widget-slider .noUi-handle").nth(1)  # crop x
        handle.scroll_into_view_if_needed()
        time.sleep(1)  # JupyterLab lays out the cells it scrolled past
        box = handle.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.down()
        page.mouse.move(box["x"] + 70, box["y"] + box["height"] / 2, steps=5)
        page.mouse.up()
        after, deadline = pictures(), time.time() + 30
        while time.time() < deadline:
            time.sleep(2)
            latest = pictures()
            if latest == after and latest != before:
                return latest
            after = latest
    return after


def hccl_rank_table(servers):
    """HCCL rank table 1.0 for [[server_id, devices], ...], rank ids numbered across servers."""
    server_list, rank = [], 0
    for server_id, devices in servers:
        device = []
        for d in range(devices):
            device.append({"device_id": str(d), "device_ip": f"192.0.2.{rank + 1}", "rank_id": str(rank)})
            rank += 1
        server_list.append({"server_id": server_id, "device": device, "host_nic_ip": "reserve"})
    return {"version": "1.0", "server_count": str(len(servers)), "status": "completed", "server_list": server_list}
