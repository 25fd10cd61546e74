"""`python -m edsr_lib.device_check`: what a user with an Ascend or GPU machine runs first, run here on CPU."""

import json
import subprocess
import sys

import pytest

from edsr_lib.device_check import CHECKS, cann_version


@pytest.mark.slow
def test_device_check_runs_on_cpu_and_reports_every_field(tmp_path):
    out = tmp_path / "check"
    steps = 3
    proc = subprocess.run(
        [sys.executable, "-m", "edsr_lib.device_check", "--out", str(out), "--steps", str(steps), "--batch-size", "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "device_check.json").read_text())
    checks = report["checks"]
    assert set(checks) == set(CHECKS)
    assert checks["mindspore"]["status"] == "ok" and "successfully" in checks["mindspore"]["run_check"]
    assert checks["device"]["target"] == "CPU" and checks["device"]["visible_devices"] == 1
    run = checks["training_sink_off"]
    assert run["status"] == "ok" and run["sink"] is False and len(run["loss_per_epoch"]) == 2
    assert run["skipped_steps"] == 0 and run["step_time_s"] > 0 and run["first_epoch_s"] > 0
    # print_every = steps: one read of the step counters per epoch, none per step
    assert run["host_reads_per_step"] == pytest.approx(1 / steps)
    precision = report["precision"]
    assert precision["convolutions"] == "float32" and precision["loss_scale"] == 1.0 and precision["deterministic"]
    assert [r["lr_size"] for r in checks["validation"]["sizes"]] == [[48, 40], [60, 76]]
    assert all(
        r["finite"] and r["sr_shape"] == [2 * r["lr_size"][0], 2 * r["lr_size"][1], 3]
        for r in checks["validation"]["sizes"]
    )
    assert (
        checks["export"]["status"] == "ok" and checks["export"]["max_abs_diff"] < 1e-3 * checks["export"]["output_peak"]
    )
    # what CPU cannot do is skipped, each with its reason
    assert set(report["skipped"]) == {"training_sink_on", "training_amp_O1", "distributed"}
    assert all(report["skipped"].values()) and report["failed"] == []
    summary = (out / "device_check.md").read_text()
    assert all(f"| {name} |" in summary for name in CHECKS)


def test_cann_version_read_from_cann_files(tmp_path):
    (tmp_path / "compiler").mkdir()
    (tmp_path / "compiler" / "version.info").write_text("Version=8.3.RC1\nsomething else\n")
    assert cann_version(tmp_path) == "8.3.RC1"
    assert cann_version(tmp_path / "missing") is None and cann_version(None) is None
