"""Core training loop: learning, the checkpoint set, exact resume, refusal of incompatible resumes."""
import numpy as np
import pytest

from edsr_lib.errors import KitError
from edsr_lib.options import Options
from edsr_lib.trainer import Trainer
from edsr_lib.weights import read_checkpoint


def _opts(tmp_path, **kw):
    base = dict(data_train="sample", data_test="none", scale=2, patch_size=24, n_resblocks=2, n_feats=8,
                test_every=3, epochs=2, batch_size=2, lr=1e-3, decay="1", seed=5,
                ckpt_save_path=str(tmp_path / "ckpt"), ckpt_save_interval=1, ckpt_save_max=1)
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
