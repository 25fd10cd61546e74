"""The EMA of the weights (ema_decay) and gradient clipping (gclip), inside the one-graph training step; the
TensorBoard log."""

import numpy as np
import pytest

from edsr_lib import load_model
from edsr_lib.data import SampleImages
from edsr_lib.errors import KitError
from edsr_lib.evaluation import evaluate
from edsr_lib.ranks import param_digest
from edsr_lib.trainer import Trainer
from edsr_lib.weights import read_checkpoint
from test_trainer import _opts


def _quiet(opts):
    return Trainer(opts, log=lambda m: None, progress=False)


def _batch(trainer, step):
    b = trainer.opts.batch_size
    pairs = [trainer.source[step * b + i] for i in range(b)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _trained(trainer):
    return {p.name: p.asnumpy().copy() for p in trainer.step_cell.weights}


def test_ema_weights_equal_a_hand_computed_ema_over_three_steps(tmp_path):
    decay = 0.9
    trainer = _quiet(_opts(tmp_path, ema_decay=decay, epochs=1))
    expected = _trained(trainer)  # BasicSR's EMA starts as a copy of the initial weights
    for step in range(3):
        loss, applied = trainer.train_step(*_batch(trainer, step))
        assert applied
        for name, value in _trained(trainer).items():
            expected[name] = decay * expected[name] + (1 - decay) * value
    averages = {p.name[len("ema.") :]: p.asnumpy() for p in trainer.step_cell.ema}
    assert set(averages) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(averages[name], value, rtol=1e-5, atol=1e-7, err_msg=name)
    assert any(not np.allclose(averages[n], v) for n, v in _trained(trainer).items())  # not the weights themselves


def test_straight_and_resumed_runs_with_ema_are_bit_identical(tmp_path):
    straight = _quiet(_opts(tmp_path / "a", ema_decay=0.9))
    straight.fit()
    _quiet(_opts(tmp_path / "b", ema_decay=0.9, epochs=1)).fit()
    resumed = _quiet(_opts(tmp_path / "b", ema_decay=0.9, resume=True))
    resumed.fit()
    assert param_digest(resumed.model) == param_digest(straight.model)
    assert param_digest(resumed.step_cell.ema) == param_digest(straight.step_cell.ema)
    raw = read_checkpoint(tmp_path / "b" / "ckpt" / "latest.ckpt", ema=False)
    assert any(k.startswith("ema.") for k in raw[2])


def test_validation_best_ckpt_and_readers_use_the_ema_weights(tmp_path):
    opts = _opts(tmp_path, ema_decay=0.9, data_test="sample", epochs=1)
    trainer = _quiet(opts)
    history = trainer.fit()
    latest = tmp_path / "ckpt" / "latest.ckpt"
    ema_weights = read_checkpoint(latest)[1]
    raw_weights = read_checkpoint(latest, ema=False)[1]
    assert any(not np.array_equal(ema_weights[k], raw_weights[k]) for k in raw_weights)
    for name, p in _trained(trainer).items():  # after validation the model holds its trained weights again
        assert np.array_equal(p, raw_weights[name]), name
    val = SampleImages(2, "test")
    assert np.isclose(evaluate(val, load_model(latest), progress=False)["psnr"], history[-1]["psnr"], atol=1e-6)
    raw_psnr = evaluate(val, load_model(latest, ema=False), progress=False)["psnr"]
    assert not np.isclose(raw_psnr, history[-1]["psnr"], atol=1e-6)
    best = read_checkpoint(tmp_path / "ckpt" / "best.ckpt")[1]
    assert all(np.array_equal(best[k], ema_weights[k]) for k in best)


def test_gclip_bounds_every_gradient_element(tmp_path):
    """SGD without momentum at lr 1 moves each weight by its (clipped) gradient: at most gclip."""
    moves = {}
    for gclip in (0.0, 1e-3):
        trainer = _quiet(_opts(tmp_path / str(gclip), optimizer="SGD", momentum=0.0, lr=1.0, gclip=gclip, epochs=1))
        before = _trained(trainer)
        trainer.train_step(*_batch(trainer, 0))
        moves[gclip] = max(float(np.abs(v - before[k]).max()) for k, v in _trained(trainer).items())
    assert moves[1e-3] <= 1e-3 * (1 + 1e-5) and moves[0.0] > 10 * 1e-3, moves


def test_tensorboard_events_are_readable_by_tensorboard_with_the_expected_tags(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = _quiet(_opts(tmp_path, data_test="sample", epochs=2, print_every=1, tensorboard="on"))
    trainer.fit()
    events = EventAccumulator(str(tmp_path / "ckpt" / "tb"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    val = "val/sample-test/x2"
    for tag in ("train/loss", "train/lr", "train/loss_scale", "train/step_time_s", f"{val}/psnr", f"{val}/ssim"):
        assert tag in tags["scalars"], (tag, tags["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]  # every host read
    psnr = [e.value for e in events.Scalars(f"{val}/psnr")]
    assert [e.step for e in events.Scalars(f"{val}/psnr")] == [3, 6]
    assert np.allclose(psnr, [h["psnr"] for h in trainer.history])
    crops = [t for t in tags["images"] if t.startswith(val)]
    assert len(crops) == 2 and len(events.Images(crops[0])) == 2
    assert events.Images(crops[0])[0].width == 3 * 96 + 2 * 4  # bicubic | SR | HR


def test_tensorboard_off_and_missing(tmp_path, monkeypatch):
    import builtins

    _quiet(_opts(tmp_path / "off", epochs=1, tensorboard="off")).fit()
    assert not (tmp_path / "off" / "ckpt" / "tb").exists()
    real_import = builtins.__import__

    def no_tensorboardx(name, *args, **kwargs):
        if name.startswith("tensorboardX"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboardx)
    _quiet(_opts(tmp_path / "auto", epochs=1)).fit()  # auto: silently off
    assert not (tmp_path / "auto" / "ckpt" / "tb").exists()
    with pytest.raises(KitError, match="tensorboard on needs tensorboardX"):
        _quiet(_opts(tmp_path / "on", epochs=1, tensorboard="on")).fit()


def test_validation_lpips_goes_to_history_and_tensorboard(tmp_path, monkeypatch, rng):
    """val_lpips: the LPIPS of the validation outputs per epoch in history.csv and under val/<set>/x<s>/lpips."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import edsr_lib.lpips
    from reference import LPIPS_ALEX, LPIPS_ALEX_STAGES, random_lpips_weights, write_pt_legacy

    trunk, _ = random_lpips_weights(rng, LPIPS_ALEX, LPIPS_ALEX_STAGES)
    write_pt_legacy(tmp_path / "alex.pth", trunk)
    asked = []

    def random_trunk(metrics, **kwargs):
        asked.append((tuple(metrics), kwargs.get("offline")))
        return {"lpips": edsr_lib.lpips.LPIPS("alex", tmp_path / "alex.pth")}

    monkeypatch.setattr(edsr_lib.lpips, "for_metrics", random_trunk)
    opts = _opts(tmp_path, data_test="sample", epochs=2, tensorboard="on", val_lpips=True)
    trainer = _quiet(opts)
    trainer.fit()
    assert asked == [(("lpips",), False)]  # one device: the trunk may be downloaded
    lpips = [h["lpips"] for h in trainer.history]
    assert all(0 < v < 1 for v in lpips) and "lpips" in (tmp_path / "ckpt" / "history.csv").read_text()
    events = EventAccumulator(str(tmp_path / "ckpt" / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    assert np.allclose([e.value for e in events.Scalars("val/sample-test/x2/lpips")], lpips)
    assert all("lpips" in row for row in trainer.validation[2])
