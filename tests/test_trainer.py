"""Core training loop: learning, the checkpoint set, exact resume, refusal of incompatible resumes."""

import os
import socket

import numpy as np
import pytest

from edsr_lib.errors import KitError
from edsr_lib.options import Options
from edsr_lib.trainer import Trainer
from edsr_lib.weights import read_checkpoint


def _opts(tmp_path, **kw):
    base = dict(
        data_train="sample",
        data_test="none",
        scale=2,
        patch_size=24,
        n_resblocks=2,
        n_feats=8,
        test_every=3,
        epochs=2,
        batch_size=2,
        lr=1e-3,
        decay="1",
        seed=5,
        ckpt_save_path=str(tmp_path / "ckpt"),
        ckpt_save_interval=1,
        ckpt_save_max=1,
    )
    return Options(**{**base, **kw})


def _weights(trainer):
    return {p.name: p.asnumpy().copy() for p in trainer.model.get_parameters()}


def test_straight_and_resumed_runs_are_bit_identical(tmp_path):
    straight = Trainer(_opts(tmp_path / "a"), log=lambda m: None, progress=False)
    straight.fit()
    first = Trainer(_opts(tmp_path / "b", epochs=1), log=lambda m: None, progress=False)
    first.fit()
    resumed = Trainer(_opts(tmp_path / "b", resume=True), log=lambda m: None, progress=False)
    assert resumed.epoch == 1
    resumed.fit()
    a, b = _weights(straight), _weights(resumed)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in straight.history] == [h["loss"] for h in resumed.history]
    files = sorted(p.name for p in (tmp_path / "a" / "ckpt").glob("*.ckpt"))
    assert files == ["best.ckpt", "edsr_x2_epoch0002.ckpt", "latest.ckpt"]  # ckpt_save_max=1 kept one
    arch, weights, rest = read_checkpoint(tmp_path / "a" / "ckpt" / "latest.ckpt")
    assert int(rest["epoch"]) == 2 and any(k.startswith("optimizer.moment1.") for k in rest)


def test_resume_with_other_architecture_is_refused(tmp_path):
    Trainer(_opts(tmp_path, epochs=1), log=lambda m: None, progress=False).fit()
    with pytest.raises(KitError, match="cannot resume"):
        Trainer(_opts(tmp_path, n_feats=16, resume=True), log=lambda m: None, progress=False)
    with pytest.raises(KitError, match="nothing to resume"):
        Trainer(_opts(tmp_path / "empty", resume=True), log=lambda m: None, progress=False)


def _quiet(opts, **kw):
    return Trainer(opts, log=lambda m: None, progress=False, **kw)


def test_parts_built_as_notebook_02_builds_them_train_like_the_trainers_own(tmp_path):
    """Notebook 02 builds the model, loss and optimizer itself after prepare_run and hands them over: the run must
    be `edsr train`'s, bit for bit (same initial weights, same steps)."""
    from edsr_lib.trainer import build_model_for, prepare_run
    from edsr_lib.training_step import make_loss, make_optimizer

    own = _quiet(_opts(tmp_path / "own", epochs=1))
    own.fit()
    opts = _opts(tmp_path / "given", epochs=1)
    run = prepare_run(opts)
    model = build_model_for(opts, run.device)
    given = _quiet(
        opts, model=model, loss=make_loss(opts), optimizer=make_optimizer(opts, model.trainable_params()), run=run
    )
    given.fit()
    a, b = _weights(own), _weights(given)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_loss_scaling_is_applied_and_undone_exactly(tmp_path):
    # Scaling the loss by a power of two and unscaling the gradients is exact in float32: the weights must equal an
    # unscaled run's bit for bit. The MindSpore ModelZoo EDSR's bug (gradients divided by the scale, loss never
    # scaled) would not.
    plain = _quiet(_opts(tmp_path / "plain", epochs=1))
    plain.fit()
    scaled = _quiet(_opts(tmp_path / "scaled", epochs=1, loss_scale=1024.0))
    scaled.fit()
    a, b = _weights(plain), _weights(scaled)
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("level", ["O1", "O2", "O3"])
def test_mixed_precision_levels_learn(tmp_path, level):
    trainer = _quiet(_opts(tmp_path, epochs=1, test_every=6, amp_level=level))
    before = _weights(trainer)
    trainer.fit()
    assert np.isfinite(trainer.last_loss)
    after = _weights(trainer)
    assert any(not np.array_equal(before[k], after[k]) for k in before if k.startswith("body."))
    assert type(trainer.scaler).__name__ == "DynamicLossScaler"


def test_nonfinite_step_is_skipped_and_dynamic_scale_lowered(tmp_path):
    import mindspore as ms

    trainer = _quiet(_opts(tmp_path, amp_level="O2"))
    lr = np.full((2, 3, 12, 12), 100.0, np.float32)
    hr = np.full((2, 3, 24, 24), 100.0, np.float32)
    bad = lr.copy()
    bad[0, 0, 0, 0] = np.nan
    before, scale = _weights(trainer), float(trainer.scaler.scale_value.asnumpy())
    loss, applied = trainer.train_step(ms.Tensor(bad), ms.Tensor(hr))
    assert not applied and not np.isfinite(loss)
    after = _weights(trainer)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert float(trainer.scaler.scale_value.asnumpy()) == scale / 2
    # an overflow-free batch at the lowered scale is applied
    while True:
        loss, applied = trainer.train_step(ms.Tensor(lr), ms.Tensor(hr))
        if applied:
            break
    assert np.isfinite(loss)


def test_repeated_nonfinite_losses_stop_and_keep_last_good_checkpoint(tmp_path):
    from edsr_lib.trainer import MAX_CONSECUTIVE_NONFINITE, TrainingStopped

    _quiet(_opts(tmp_path, epochs=1)).fit()
    good = read_checkpoint(tmp_path / "ckpt" / "latest.ckpt")[1]
    # 1e38 * an L1 loss of ~50 overflows float32 on every step
    broken = _quiet(_opts(tmp_path, epochs=2, test_every=MAX_CONSECUTIVE_NONFINITE + 5, loss_scale=1e38, resume=True))
    # the host reads the step counters every print_every steps (here the whole epoch), so it sees the run of 37
    with pytest.raises(TrainingStopped, match=f"{MAX_CONSECUTIVE_NONFINITE + 5} non-finite steps in a row.*epoch 1"):
        broken.fit()
    arch, kept, rest = read_checkpoint(tmp_path / "ckpt" / "latest.ckpt")
    assert int(rest["epoch"]) == 1 and all(np.array_equal(good[k], kept[k]) for k in good)


def test_finetune_x3_from_x2_checkpoint(tmp_path):
    _quiet(_opts(tmp_path / "x2", epochs=1)).fit()
    x2 = read_checkpoint(tmp_path / "x2" / "ckpt" / "latest.ckpt")[1]
    x3 = _quiet(
        _opts(
            tmp_path / "x3", scale=3, patch_size=36, epochs=1, ckpt_path=str(tmp_path / "x2" / "ckpt" / "latest.ckpt")
        )
    )
    w3 = _weights(x3)
    assert all(np.array_equal(x2[k], w3[k]) for k in x2 if k.startswith(("head.", "body.")))
    x3.fit()
    with pytest.raises(KitError, match="cannot resume"):
        _quiet(_opts(tmp_path / "x2", scale=3, patch_size=36, resume=True))


def test_run_folder_records_options_versions_and_curves(tmp_path):
    import csv
    import json

    import mindspore as ms

    trainer = _quiet(_opts(tmp_path, data_test="sample", n_feats=4))
    trainer.fit()
    run = json.loads((tmp_path / "ckpt" / "run.json").read_text())
    assert run["versions"]["mindspore"] == ms.__version__ and run["options"]["n_feats"] == 4
    assert run["device"] == "CPU" and run["world_size"] == 1
    rows = list(csv.DictReader(open(tmp_path / "ckpt" / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and all(float(r["psnr_bicubic"]) > 20 for r in rows)
    assert (tmp_path / "ckpt" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = trainer.gather_final_metrics()
    total = sum(v.astype(np.float64).sum() for v in read_checkpoint(tmp_path / "ckpt" / "latest.ckpt")[1].values())
    assert metrics["param_checksum"] == pytest.approx(total, rel=1e-12)


KILLER = r"""
import json, os, signal, sys
import edsr_lib
import edsr_lib.weights as weights
from edsr_lib.options import Options
from edsr_lib.trainer import Trainer

real_save = weights.ms.save_checkpoint

def save_then_die(records, path, append_dict=None, **kw):
    # epoch 2's first file: write half of it, then die as `kill -9` would, before any rename
    if append_dict and int(append_dict.get("epoch", 0)) == 2:
        real_save(records, path, append_dict=append_dict, **kw)
        size = os.path.getsize(path)
        os.chmod(path, 0o644)
        with open(path, "r+b") as f:
            f.truncate(size // 2)
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(records, path, append_dict=append_dict, **kw)

weights.ms.save_checkpoint = save_then_die
Trainer(Options(**json.loads(sys.argv[1])), log=print, progress=False).fit()
"""


@pytest.mark.slow
def test_kill_mid_checkpoint_then_resume_matches_straight_run(tmp_path):
    import json
    import signal
    import subprocess
    import sys

    opts = _opts(tmp_path / "killed", epochs=3)
    proc = subprocess.run([sys.executable, "-c", KILLER, json.dumps(opts.to_dict())], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    ckpt = tmp_path / "killed" / "ckpt"
    assert int(read_checkpoint(ckpt / "latest.ckpt")[2]["epoch"]) == 1  # the previous checkpoint is intact
    resumed = _quiet(_opts(tmp_path / "killed", epochs=3, resume=True))
    assert resumed.epoch == 1
    resumed.fit()
    straight = _quiet(_opts(tmp_path / "straight", epochs=3))
    straight.fit()
    a, b = _weights(straight), _weights(resumed)
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_cli_train_resume_and_errors(tmp_path):
    from conftest import run_cli

    args = [
        "train",
        "--n_resblocks",
        2,
        "--n_feats",
        8,
        "--patch_size",
        24,
        "--test_every",
        2,
        "--batch_size",
        2,
        "--data_test",
        "none",
        "--ckpt_save_path",
        tmp_path / "run",
        "--progress",
        "none",
    ]
    first = run_cli(*args, "--epochs", 1)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "done: 1 epochs" in first.stdout and "parameters: 5699" in first.stdout
    again = run_cli(*args, "--epochs", 2, "--resume")
    assert again.returncode == 0 and "resumed from" in again.stdout and "done: 2 epochs" in again.stdout
    for bad, message in (
        (["--amp_level", "O9"], "amp_level must be O0"),
        (["--scale", 3, "--patch_size", 20], "multiple"),
    ):
        result = run_cli("train", *bad)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_baseline_learns_on_the_sample_photos_and_beats_bicubic(tmp_path):
    """The issue's acceptance run, shortened: EDSR-baseline x2 with the training notebook's defaults (batch 16, HR
    patch 64, lr 5e-4) for 5 epochs of 25 iterations, validated on the 3 held-out photos (about 5 CPU minutes)."""
    opts = Options(
        data_train="sample",
        data_test="sample",
        scale=2,
        patch_size=64,
        batch_size=16,
        lr=5e-4,
        test_every=25,
        epochs=5,
        decay="6",
        seed=1,
        ckpt_save_path=str(tmp_path / "ckpt"),
    )
    trainer = _quiet(opts)
    history = trainer.fit()
    assert history[-1]["loss"] < history[0]["loss"] / 2
    assert history[-1]["psnr"] > history[-1]["psnr_bicubic"] + 0.2, history


def test_a_training_step_is_one_graph_launch_and_the_host_reads_only_every_print_every_steps(tmp_path, monkeypatch):
    import mindspore as ms

    trainer = _quiet(_opts(tmp_path, epochs=2, test_every=6, print_every=3))
    trainer.train_epoch()  # compiles the step graph once (compilation reads the parameters)
    launches, reads = [], []
    graph = trainer.step
    monkeypatch.setattr(trainer, "step", lambda *a: launches.append(1) or graph(*a))
    real_asnumpy = ms.Tensor.asnumpy
    monkeypatch.setattr(ms.Tensor, "asnumpy", lambda self: reads.append(1) or real_asnumpy(self))
    loss, _ = trainer.train_epoch()
    assert len(launches) == 6  # forward, backward, update, loss scale and counters: one call per step
    # two reads of the step counters (after steps 3 and 6) and nothing per step
    assert len(reads) == 2, len(reads)
    assert np.isfinite(loss)


def test_a_run_folder_belongs_to_one_run(tmp_path):
    from edsr_lib.records import run_lock

    _quiet(_opts(tmp_path, epochs=1)).fit()
    best = (tmp_path / "ckpt" / "best.ckpt").read_bytes()
    with pytest.raises(KitError, match="holds an earlier run.*resume=True.*overwrite=True"):
        _quiet(_opts(tmp_path, epochs=1))
    assert (tmp_path / "ckpt" / "best.ckpt").read_bytes() == best  # nothing replaced
    _quiet(_opts(tmp_path, epochs=1, overwrite=True)).fit()
    # a second run while one holds the folder is refused, naming the holder; a dead holder's lock is taken over
    with run_lock(tmp_path / "ckpt"):
        with pytest.raises(KitError, match=f"another training run is using this folder \\(process {os.getpid()}"):
            _quiet(_opts(tmp_path, epochs=2, resume=True)).fit()
    (tmp_path / "ckpt" / ".lock").write_text(f"{socket.gethostname()} 999999999")
    _quiet(_opts(tmp_path, epochs=2, resume=True)).fit()
    assert not (tmp_path / "ckpt" / ".lock").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(KitError, match="is a file"):
        _quiet(_opts(tmp_path, ckpt_save_path=str(tmp_path / "file")))


def test_checkpoints_with_non_finite_or_integer_weights_are_refused(tmp_path):
    from edsr_lib import load_model
    from edsr_lib.weights import save_checkpoint

    trainer = _quiet(_opts(tmp_path, epochs=1))
    weights = _weights(trainer)
    for name, bad in (("nan.ckpt", np.float32(np.nan)), ("int.ckpt", None)):
        broken = dict(weights)
        key = "body.0.body.0.weight"
        broken[key] = broken[key].astype(np.int32) if bad is None else np.full_like(broken[key], bad)
        save_checkpoint(tmp_path / name, trainer.opts.architecture(), broken)
        with pytest.raises(KitError, match=f"{name}: weight {key} (holds NaN|is int32)"):
            load_model(tmp_path / name)


def test_resume_from_converted_weights_says_what_to_do(tmp_path):
    from edsr_lib.weights import save_checkpoint

    trainer = _quiet(_opts(tmp_path / "a", epochs=1))
    (tmp_path / "b" / "ckpt").mkdir(parents=True)
    save_checkpoint(tmp_path / "b" / "ckpt" / "latest.ckpt", trainer.opts.architecture(), _weights(trainer))
    with pytest.raises(KitError, match="no training state.*ckpt_path"):
        _quiet(_opts(tmp_path / "b", epochs=1, resume=True))


@pytest.mark.slow
def test_ctrl_c_ends_training_cleanly(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edsr_lib.cli",
            "train",
            "--n_resblocks",
            "1",
            "--n_feats",
            "4",
            "--patch_size",
            "24",
            "--test_every",
            "50",
            "--epochs",
            "1000",
            "--batch_size",
            "1",
            "--data_test",
            "none",
            "--ckpt_save_path",
            str(run),
            "--progress",
            "none",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not (run / "latest.ckpt").exists() and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)  # MindSpore turns this into SIGTERM while a graph runs
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "edsr: interrupted", err[-2000:]
    assert not (run / ".lock").exists()
    assert int(read_checkpoint(run / "latest.ckpt")[2]["epoch"]) >= 1


def test_a_validation_image_too_small_for_the_metrics_is_refused_before_training(tmp_path):
    from PIL import Image

    folder = tmp_path / "val"
    folder.mkdir()
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(folder / "tiny.png")  # x2: 12 - 2*2 < 11 for SSIM
    with pytest.raises(KitError, match="tiny.png: too small"):
        _quiet(_opts(tmp_path, data_test=str(folder)))


def test_loss_option_in_edsr_pytorch_syntax_matches_its_formula(rng):
    import mindspore as ms

    from edsr_lib.training_step import make_loss

    sr = rng.uniform(0, 255, (2, 3, 6, 5)).astype(np.float32)
    hr = rng.uniform(0, 255, (2, 3, 6, 5)).astype(np.float32)
    l1, mse = np.abs(sr - hr).mean(), ((sr - hr) ** 2).mean()
    for spec, expected in (("1*L1", l1), ("1*MSE", mse), ("1*L1+0.1*MSE", l1 + 0.1 * mse), ("0.5*L1", 0.5 * l1)):
        loss = make_loss(Options(loss=spec))
        got = float(loss(ms.Tensor(sr), ms.Tensor(hr)).asnumpy())
        assert got == pytest.approx(float(expected), rel=1e-5), spec
    for bad in ("1*VGG54", "x*L1", "-1*L1", "1*L1+", "nan*MSE"):
        with pytest.raises(KitError, match="each term is WEIGHT\\*NAME"):
            Options(loss=bad)


def test_trainer_takes_its_parts_and_a_weighted_loss_trains(tmp_path):
    """An injected loss is what trains: a hand-written MSE Cell gives the `1*MSE` option's run, step for step."""
    from mindspore import nn, ops

    class HandMSE(nn.Cell):
        def construct(self, sr, hr):
            return ops.mean((sr - hr) ** 2)

    by_option = Trainer(_opts(tmp_path / "a", loss="1*MSE"), log=lambda m: None, progress=False)
    injected = Trainer(_opts(tmp_path / "b"), log=lambda m: None, progress=False, loss=HandMSE())
    l1 = Trainer(_opts(tmp_path / "c"), log=lambda m: None, progress=False)
    losses = [t.fit()[-1]["loss"] for t in (by_option, injected, l1)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5) and abs(losses[0] - losses[2]) > 1.0
    weighted = Trainer(_opts(tmp_path / "d", loss="1*L1+0.1*MSE"), log=lambda m: None, progress=False).fit()
    assert np.isfinite(weighted[-1]["loss"])
    from edsr_lib.data import open_dataset
    from edsr_lib.model import Architecture, build_model

    train_set = open_dataset("sample", 2, split="train")
    given = Trainer(_opts(tmp_path / "e"), log=lambda m: None, progress=False, train_set=train_set)
    assert given.train_set is train_set
    with pytest.raises(KitError, match="differs from the options"):
        Trainer(
            _opts(tmp_path / "f"),
            log=lambda m: None,
            progress=False,
            model=build_model(Architecture(scale=2, n_resblocks=3, n_feats=8)),
        )


def _cpu_data_sink(calls):
    """What MindSpore's data_sink does (mindspore/train/data_sink.py), fed from the host because its GetNext queue
    needs Ascend or GPU: with a jit_config, `fn` is compiled at that jit level and run `sink_size` times per call on
    the dataset's batches; without one, `fn` runs op by op (PyNative)."""
    import mindspore as ms

    def data_sink(fn, dataset, sink_size=1, jit_config=None, input_signature=None):
        calls.append(jit_config)
        run = fn if jit_config is None else ms.jit(fn, jit_level=jit_config.jit_config_dict["jit_level"] or "O0")
        batches = dataset.create_tuple_iterator(num_epochs=-1)

        def sink_process():
            out = None
            for _ in range(sink_size):
                out = run(*next(batches))
            return out

        return sink_process

    return data_sink


@pytest.mark.parametrize("with_jit_config", [True, False])
def test_dataset_sink_runs_the_one_compiled_step(tmp_path, monkeypatch, with_jit_config):
    """3 sink calls of 4 steps: the step's Python body runs at most once (compiled) instead of 12 times (eager),
    and the weights equal a host-fed run's bit for bit. The second case shows the test fails without jit_config."""
    import mindspore as ms

    from edsr_lib import trainer as trainer_module

    kw = dict(epochs=1, test_every=12, print_every=4)
    plain = _quiet(_opts(tmp_path / "plain", **kw))
    plain.fit()

    executed, calls = [], []
    original = trainer_module.TrainStep.construct

    def counting_construct(self, lr, hr, scale_index=0):
        executed.append(1)
        return original(self, lr, hr, scale_index)

    monkeypatch.setattr(ms, "data_sink", _cpu_data_sink(calls))
    if not with_jit_config:
        monkeypatch.setattr(
            trainer_module, "open_sink", lambda step, data, size: ms.data_sink(step, data, sink_size=size)
        )
    monkeypatch.setattr(trainer_module.TrainStep, "construct", counting_construct)
    sunk = _quiet(_opts(tmp_path / "sink", **kw))
    sunk.sink = True  # MindSpore's sink refuses CPU: the stand-in above takes its place
    sunk.fit()
    assert len(calls) == 1  # one sink for the run
    if with_jit_config:
        assert len(executed) <= 1, len(executed)
        assert calls[0].jit_config_dict["jit_level"] == trainer_module.STEP_JIT_LEVEL == "O0"
        a, b = _weights(plain), _weights(sunk)
        assert all(np.array_equal(a[k], b[k]) for k in a)
    else:
        assert len(executed) == 12  # op by op: what the kit did before it passed a jit_config


def test_precision_decision_table():
    from edsr_lib.runtime import FLOAT16_CONV_LOSS_SCALE, precision_plan

    def plan(device, chip=None, mode="", amp="O0", scale=0.0):
        p = precision_plan(device, chip, mode, amp, scale)
        return p["convolutions"].split(" ")[0], p["loss_scale"], p["precision_mode"]

    # 910A: float16 Cube convolutions whatever the mode, so O0 keeps the kit's scale of 1024
    assert plan("Ascend", "910A") == ("float16", FLOAT16_CONV_LOSS_SCALE, "allow_fp32_to_fp16")
    assert plan("Ascend", "910A", "force_fp16") == ("float16", 1024.0, "force_fp16")
    for mode in ("must_keep_origin_dtype", "force_fp32", "allow_fp32_to_bf16"):
        with pytest.raises(KitError, match=f"precision_mode {mode} on an Atlas training card.*float16 only"):
            precision_plan("Ascend", "910A", mode)
    # A2 (910B): HF32 by default, float32 with must_keep_origin_dtype: float32's exponent range, no scale
    assert plan("Ascend", "A2") == ("HF32", 1.0, "must_keep_origin_dtype")
    assert plan("Ascend", "A2", "must_keep_origin_dtype") == ("float32", 1.0, "must_keep_origin_dtype")
    assert plan("Ascend", "A2", "allow_fp32_to_fp16") == ("float16", 1024.0, "allow_fp32_to_fp16")
    assert plan("Ascend", "A2", "allow_fp32_to_bf16") == ("bfloat16", 1.0, "allow_fp32_to_bf16")
    # CPU and GPU: no scale under O0; mixed precision is dynamic; a given scale always wins
    assert plan("CPU") == ("float32", 1.0, None)
    assert plan("GPU")[1] == 1.0 and "TF32" in precision_plan("GPU")["convolutions"]
    for device, chip in (("CPU", None), ("Ascend", "910A"), ("Ascend", "A2"), ("GPU", None)):
        assert plan(device, chip, amp="O2")[:2] == ("float16", "dynamic")
        assert plan(device, chip, scale=128.0)[1] == 128.0
    record = precision_plan("Ascend", "910A")
    assert "subnormal" in record["loss_scale_reason"] and record["chip"] == "910A"


def test_a_broken_accelerator_install_is_one_line_not_a_cpu_run(tmp_path):
    import subprocess
    import sys

    from edsr_lib.runtime import ACCEPTED_CANN_VERSIONS, require_backend, resolve_device

    fake_cann = tmp_path / "Ascend"
    fake_cann.mkdir()
    environ = {"ASCEND_HOME_PATH": str(fake_cann)}
    assert resolve_device(environ=environ) == "Ascend"  # CANN present: Ascend is meant, not CPU
    assert resolve_device("CPU", environ=environ) == "CPU"  # unless CPU is chosen explicitly
    with pytest.raises(KitError, match=f"CANN found at {fake_cann}.*did not load: no such lib.*8.2, 8.3"):
        require_backend("Ascend", lambda target: (False, "no such lib\n"), environ)
    with pytest.raises(KitError, match="GPU plugin did not load.*CUDA 11.1 or 11.6.*cuDNN 8.*CUDA_HOME"):
        require_backend("GPU", lambda target: (False, ""))
    require_backend("Ascend", lambda target: (True, ""))
    assert ACCEPTED_CANN_VERSIONS == ("8.2", "8.3", "8.5", "9.0", "9.1")
    # the real thing: this machine has no Ascend or GPU libraries, so MindSpore's plugins do not load
    env = {k: v for k, v in os.environ.items() if k != "DEVICE_TARGET"}
    for extra, args, expected in (
        ({"ASCEND_HOME_PATH": str(fake_cann)}, [], "Ascend plugin did not load: Load dynamic library"),
        ({}, ["--device_target", "GPU"], "GPU plugin did not load"),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "edsr_lib.cli", "train", "--epochs", "1", "--ckpt_save_path", str(tmp_path / "c")]
            + args,
            capture_output=True,
            text=True,
            env={**env, **extra},
        )
        assert out.returncode == 2 and expected in out.stderr, out.stderr[-2000:]
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
        assert not (tmp_path / "c").exists()
