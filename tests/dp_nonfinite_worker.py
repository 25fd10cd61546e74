"""Run under msrun by tests/test_distributed.py: a non-finite gradient on rank 1 only must make every rank skip the
same steps and keep identical weights and loss-scale state; rank 1 non-finite on every step must stop all ranks alike.
Writes <out>/rank_<r>.json."""

import json
import os
import sys
from pathlib import Path

import numpy as np

import edsr_lib.backend  # noqa: F401  (process environment before MindSpore)
from edsr_lib.runtime import init_distributed

if os.environ.get("MS_ROLE") == "MS_SCHED":
    init_distributed("CPU")
    sys.exit(0)

from edsr_lib.options import Options  # noqa: E402
from edsr_lib.pipeline import PatchSource  # noqa: E402
from edsr_lib.ranks import param_digest  # noqa: E402
from edsr_lib.trainer import Trainer, TrainingStopped  # noqa: E402


class NaNSource(PatchSource):
    def __getitem__(self, index):
        lr, hr = super().__getitem__(index)
        return np.full_like(lr, np.nan), hr


out = Path(sys.argv[1])
opts = Options(
    data_train="sample",
    data_test="none",
    n_resblocks=1,
    n_feats=4,
    patch_size=24,
    test_every=40,
    epochs=1,
    batch_size=1,
    lr=1e-4,
    seed=2,
    amp_level="O2",
    print_every=40,
    ckpt_save_path=str(out / "ckpt"),
)
trainer = Trainer(opts, log=lambda m: None, progress=False)
rng = np.random.default_rng(0)  # the same batch on both ranks
lr, hr = rng.uniform(0, 255, (1, 3, 12, 12)).astype(np.float32), rng.uniform(0, 255, (1, 3, 24, 24)).astype(np.float32)
for _ in range(20):  # dynamic loss scaling starts at 2**16: let float16 settle
    if trainer.train_step(lr, hr)[1]:
        break
steps = []
for step in range(3):
    x = lr.copy()
    if step == 1 and trainer.rank == 1:
        x[0, 0, 0, 0] = np.inf
    loss, applied = trainer.train_step(x, hr)
    steps.append(
        {
            "applied": applied,
            "scale": trainer.loss_scale_value(),
            "counter": int(trainer.scaler.counter.asnumpy()),
            "digest": param_digest(trainer.model),
        }
    )
if trainer.rank == 1:
    trainer.source.__class__ = NaNSource
try:
    trainer.fit()
    stopped = None
except TrainingStopped as exc:
    stopped = str(exc)
result = {
    "rank": trainer.rank,
    "steps": steps,
    "stopped": stopped,
    "digest_after_stop": param_digest(trainer.model),
    "scale_after_stop": trainer.loss_scale_value(),
}
(out / f"rank_{trainer.rank}.json").write_text(json.dumps(result))
