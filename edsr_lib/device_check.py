"""The first thing to run on a new machine: `python -m edsr_lib.device_check [--out DIR]`.

It checks, on the device this machine has (Ascend, GPU or CPU), what the training and deployment paths need:
MindSpore's own installation check; the device, its SoC and the CANN or CUDA version; the precision the training
step computes in; 2 epochs x 20 steps of the baseline at batch 16 with the dataset sink on and off, and with
amp_level O1 (loss, the first epoch's time with compilation, the step time after it, skipped steps, host reads per
step); one validation at two image sizes (the dynamic-shape inference graph); a 2-rank msrun job when two devices
are visible; a MINDIR export and its verification. What the device cannot run is skipped with the reason.
It writes `device_check.json` and a readable `device_check.md` to DIR, and exits non-zero when a check failed.
"""

import contextlib
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .errors import KitError, OneLineArgumentParser
from .files import atomic_write, prepare_output_folder, write_json

CHECKS = ("mindspore", "device", "training_sink_off", "training_sink_on", "training_amp_O1", "validation",
          "distributed", "export")  # fmt: skip


def _skipped(reason):
    return {"status": "skipped", "reason": reason}


@contextlib.contextmanager
def counting_host_reads(counter):
    """Counts device-to-host reads (Tensor.asnumpy) made inside the block: the per-step synchronisations."""
    from .backend import ms

    real = ms.Tensor.asnumpy

    def counted(self):
        counter.append(1)
        return real(self)

    ms.Tensor.asnumpy = counted
    try:
        yield counter
    finally:
        ms.Tensor.asnumpy = real


def mindspore_check():
    """MindSpore's own installation check (mindspore.run_check), with what it printed."""
    from .backend import ms

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        ms.run_check()
    text = printed.getvalue().strip()
    ok = "successfully" in text and "failed" not in text.lower()
    return {"status": "ok" if ok else "failed", "version": ms.__version__, "run_check": text}


def _read_first_line(path):
    with contextlib.suppress(OSError):
        return Path(path).read_text(errors="replace").strip().splitlines()[0]
    return None


def cann_version(home):
    """CANN's version as its own files state it (MindSpore's checker reads <ASCEND_HOME_PATH>/compiler/version.info)."""
    if not home:
        return None
    for relative in ("compiler/version.info", "version.info", "ascend-toolkit/latest/compiler/version.info"):
        line = _read_first_line(Path(home) / relative)
        if line:
            return line.split("=", 1)[-1].strip()
    return None


def cuda_version(environ=None):
    """The CUDA toolkit version `nvcc --version` reports from $CUDA_HOME (MindSpore chooses its GPU plugin by it)."""
    environ = os.environ if environ is None else environ
    nvcc = Path(environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc"
    if not nvcc.is_file():
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, timeout=30).stdout
        return next((line.split("release")[-1].split(",")[0].strip() for line in out.splitlines() if "release" in line))
    return None


def visible_devices(device):
    """How many devices of this kind MindSpore sees (1 for CPU: one process uses the whole CPU)."""
    from . import backend  # noqa: F401  (MindSpore after the kit's environment)

    if device == "Ascend":
        from mindspore.device_context.ascend import device_count

        return int(device_count())
    if device == "GPU":
        from mindspore.device_context.gpu import device_count

        return int(device_count())
    return 1


def device_facts(device):
    from .runtime import ascend_chip, cann_home

    facts = {"status": "ok", "target": device, "visible_devices": visible_devices(device)}
    if device == "Ascend":
        facts["chip"], facts["soc"] = ascend_chip()
        facts["cann_home"] = cann_home()
        facts["cann_version"] = cann_version(facts["cann_home"])
    elif device == "GPU":
        facts["cuda_home"] = os.environ.get("CUDA_HOME")
        facts["cuda_version"] = cuda_version()
    return facts


def training_run(folder, device, steps, batch_size, sink, amp_level="O0", log=print):
    """2 epochs of `steps` steps of the baseline: the first with compilation, the second at speed."""
    from .options import Options
    from .trainer import Trainer

    opts = Options(
        data_train="sample",
        data_test="none",
        test_every=steps,
        epochs=2,
        batch_size=batch_size,
        print_every=steps,
        decay="100",
        amp_level=amp_level,
        dataset_sink="on" if sink else "off",
        ckpt_save_path=str(folder),
        overwrite=True,
        tensorboard="off",
        device_target=device,
    )
    trainer = Trainer(opts, log=lambda m: log(f"  {m}"), progress=False)
    times, losses, reads = [], [], []
    for _ in range(opts.epochs):
        start = time.perf_counter()
        with counting_host_reads(reads) if len(times) == 1 else contextlib.nullcontext():
            loss, _ = trainer.train_epoch()
        times.append(time.perf_counter() - start)
        losses.append(loss)
    trainer.save(is_best=True)  # latest.ckpt, for the export check
    return {
        "status": "ok" if all(np.isfinite(losses)) and trainer.skipped_steps == 0 else "failed",
        "sink": trainer.sink,
        "amp_level": amp_level,
        "batch_size": batch_size,
        "steps_per_epoch": steps,
        "loss_per_epoch": [float(x) for x in losses],
        "first_epoch_s": times[0],
        "step_time_s": times[1] / steps,
        "skipped_steps": trainer.skipped_steps,
        "host_reads_per_step": len(reads) / steps,
        "loss_scale": trainer.loss_scale_value(),
        "precision": trainer.precision,
    }, trainer


def validation_run(trainer, sizes=((48, 40), (60, 76))):
    """The trained network on two LR sizes: the dynamic-shape graph compiles for each and gives finite output."""
    from .inference import upscale_float

    model = trainer.model.at_scale(trainer.opts.scales()[0])
    model.set_train(False)
    rng = np.random.default_rng(0)
    rows = []
    for height, width in sizes:
        image = rng.uniform(0, 255, (height, width, 3)).astype(np.uint8)
        start = time.perf_counter()
        out = upscale_float(model, image)
        rows.append(
            {
                "lr_size": [height, width],
                "sr_shape": list(out.shape),
                "seconds": time.perf_counter() - start,
                "finite": bool(np.isfinite(out).all()),
            }
        )
    scale = trainer.opts.scales()[0]
    ok = all(r["finite"] and r["sr_shape"][:2] == [r["lr_size"][0] * scale, r["lr_size"][1] * scale] for r in rows)
    return {"status": "ok" if ok else "failed", "sizes": rows}


def export_run(checkpoint, folder):
    from .export import export_model, verify_export

    path, _ = export_model(checkpoint, "MINDIR", Path(folder) / "baseline_x2.mindir")
    diff, peak = verify_export(checkpoint, path)
    return {
        "status": "ok" if diff <= 1e-3 * max(peak, 1.0) else "failed",
        "file": str(path),
        "max_abs_diff": diff,
        "output_peak": peak,
    }


def distributed_run(folder, steps, batch_size):
    from .launch import run_distributed

    params = {"epochs": 1, "test_every": steps, "batch_size": batch_size, "print_every": steps, "data_test": "none"}
    metrics = run_distributed("sample", 2, folder, params, log=lambda m: print(f"  {m}"))
    agree = all(m.get("ranks_agree") for m in metrics)
    return {"status": "ok" if agree else "failed", "ranks": len(metrics), "ranks_agree": agree}


def run_checks(out, steps=20, batch_size=16, log=print):
    """Every check in order; one failing does not stop the others. Returns the report written to `out`."""
    from .runtime import setup_device

    out = prepare_output_folder(out, "--out", kit_files=("device_check.json", "device_check.md", "train"))
    started = time.perf_counter()
    report = {"checks": {}}
    checks = report["checks"]

    def attempt(name, fn):
        log(f"{name} ...")
        t0 = time.perf_counter()
        try:
            result = fn()
        except KitError as exc:
            result = {"status": "failed", "reason": str(exc)}
        except Exception as exc:  # a device check reports every failure and goes on to the next check
            result = {
                "status": "failed",
                "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            }
        result.setdefault("seconds", time.perf_counter() - t0)
        checks[name] = result
        log(f"{name}: {result['status']}" + (f" ({result['reason']})" if result.get("reason") else ""))
        return result

    device = setup_device()
    attempt("mindspore", mindspore_check)
    attempt("device", lambda: device_facts(device))
    trained = {}

    def train(sink, amp_level="O0"):
        result, trainer = training_run(out / "train", device, steps, batch_size, sink, amp_level, log)
        trained["trainer"] = trainer
        return result

    attempt("training_sink_off", lambda: train(False))
    if device == "CPU":
        checks["training_sink_on"] = _skipped("MindSpore's dataset sink (data_sink) runs on Ascend and GPU only")
        checks["training_amp_O1"] = _skipped(
            "mixed precision is for Ascend and GPU: on CPU it runs MindSpore's float16 Conv2d, far slower than O0"
        )
    else:
        attempt("training_sink_on", lambda: train(True))
        attempt("training_amp_O1", lambda: train(True, "O1"))
    if "trainer" in trained:
        attempt("validation", lambda: validation_run(trained["trainer"]))
    else:
        checks["validation"] = _skipped("no training run finished to validate")
    count = checks["device"].get("visible_devices", 1)
    if device == "CPU" or count < 2:
        checks["distributed"] = _skipped(f"needs two {device} devices; {count} visible")
    else:
        attempt("distributed", lambda: distributed_run(out / "distribute", steps, max(1, batch_size // 2)))
    checkpoint = out / "train" / "latest.ckpt"
    if checkpoint.is_file():
        attempt("export", lambda: export_run(checkpoint, out))
    else:
        checks["export"] = _skipped("no checkpoint from the training run to export")
    report["precision"] = checks.get("training_sink_off", {}).get("precision")
    report["skipped"] = {name: r["reason"] for name, r in checks.items() if r["status"] == "skipped"}
    report["failed"] = [name for name, r in checks.items() if r["status"] == "failed"]
    report["elapsed_s"] = time.perf_counter() - started
    write_json(out / "device_check.json", report)
    atomic_write(out / "device_check.md", lambda tmp: Path(tmp).write_text(summary(report)))
    return report


def summary(report):
    """device_check.md: a line per check, then the figures that matter."""
    checks = report["checks"]
    device = checks.get("device", {})
    lines = [
        "# EDSR kit device check",
        "",
        f"MindSpore {checks.get('mindspore', {}).get('version', '?')} on {device.get('target', '?')}"
        + (f" ({device['chip']}, SoC {device['soc']}, CANN {device.get('cann_version')})" if device.get("chip") else "")
        + (f" (CUDA {device.get('cuda_version')})" if device.get("target") == "GPU" else "")
        + f", {report['elapsed_s']:.0f} s",
        "",
        "| check | status | detail |",
        "|---|---|---|",
    ]
    for name in CHECKS:
        result = checks.get(name, {"status": "?"})
        if "step_time_s" in result:
            detail = (
                f"step {result['step_time_s'] * 1000:.0f} ms, first epoch {result['first_epoch_s']:.1f} s, loss "
                f"{result['loss_per_epoch'][-1]:.3f}, skipped {result['skipped_steps']}, host reads/step "
                f"{result['host_reads_per_step']:.2f}"
            )
        elif "max_abs_diff" in result:
            difference, peak = result["max_abs_diff"], result["output_peak"]
            detail = f"largest MINDIR - checkpoint difference {difference:.3g}, outputs up to {peak:.0f}"
        elif "sizes" in result:
            detail = ", ".join(f"{r['lr_size'][0]}x{r['lr_size'][1]} in {r['seconds']:.2f} s" for r in result["sizes"])
        else:
            detail = result.get("reason", "")
        lines.append(f"| {name} | {result['status']} | {detail} |")
    precision = report.get("precision") or {}
    if precision:
        lines += [
            "",
            f"Precision: convolutions {precision.get('convolutions')}, loss scale {precision.get('loss_scale')} "
            f"({precision.get('loss_scale_reason')}), precision mode {precision.get('precision_mode')}.",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = OneLineArgumentParser(prog="python -m edsr_lib.device_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/device_check", help="folder for device_check.json and .md")
    parser.add_argument("--steps", type=int, default=20, help="steps per training epoch (2 epochs per run)")
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=16)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1:
        parser.error("--steps and --batch-size must be at least 1")
    try:
        report = run_checks(args.out, args.steps, args.batch_size)
    except KitError as exc:
        print(f"edsr: error: {exc}", file=sys.stderr)
        return 2
    print(summary(report))
    print(f"wrote {Path(args.out) / 'device_check.json'} and device_check.md")
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
