"""The training step and what it is built from: the loss, the optimizer, the loss scaler, mixed precision, and the
step itself, one graph that `Trainer.fit` and `Trainer.train_step` both call (and the dataset sink wraps)."""

from typing import TYPE_CHECKING

import numpy as np

from .backend import Parameter, ParameterTuple, Tensor, ms, nn, ops
from .runtime import DYNAMIC_SCALE_START, DYNAMIC_SCALE_WINDOW, mindspore_log_silenced
from .weights import EMA_PREFIX

if TYPE_CHECKING:  # options.py imports this module
    from .options import Options

# The training step's compile level, on the host-fed and the dataset-sink path alike: O0, MindSpore's kernel-by-kernel
# ms_backend. It is MindSpore 2.10's default for ms.jit and on A2 (910B) and GPU. 910A's own default would be O2,
# the GE engine: 2.10 deprecates jit_level "O2" and backend "GE" (graph/jit_config.py, graph/api.py), GE takes no
# dynamic shapes (the validation graphs), and data_sink with an empty level leaves the choice to the chip.
STEP_JIT_LEVEL = "O0"


def open_sink(step, dataset, sink_size):
    """MindSpore's dataset sink around the compiled step: with a jit_config, GetNext and the whole TrainStep are one
    graph, run `sink_size` times per call with no host read between (without one, data_sink runs `step` op by op in
    PyNative: mindspore/train/data_sink.py). Ascend and GPU only; tests replace ms.data_sink by a CPU stand-in."""
    return ms.data_sink(step, dataset, sink_size=sink_size, jit_config=ms.JitConfig(jit_level=STEP_JIT_LEVEL))


AMP_LEVELS = ("O0", "O1", "O2", "O3")
OPTIMIZERS = ("ADAM", "SGD")
# auto: the dataset sink on Ascend and GPU, off on CPU; on: required (refused on CPU); off: host-fed steps.
SINK_MODES = ("auto", "on", "off", "true", "false")


def apply_mixed_precision(model: nn.Cell, amp_level: str) -> nn.Cell:
    """O0: float32. O1: float16 convolutions (EDSR's only white-list op), float32 elsewhere.
    O2: float16 network with float32 output. O3: float16 everywhere. The loss is always float32.
    Changes `model` in place and returns it (the step casts the output to float32 itself)."""
    if amp_level == "O1":
        for _, cell in model.cells_and_names():
            if isinstance(cell, nn.Conv2d):
                cell.to_float(ms.float16)
    elif amp_level in ("O2", "O3"):
        # MindSpore 2.10 casts the cells in place and returns them wrapped in _OutputTo32; its rewrite path
        # (MS_AMP_BY_REWRITE) would return a new network instead, and the setting would be lost on `model`.
        wrapped = ms.amp.auto_mixed_precision(model, amp_level)
        if getattr(wrapped, "_backbone", wrapped) is not model:
            raise RuntimeError(f"mindspore.amp.auto_mixed_precision({amp_level}) did not convert the network in place")
    return model


def make_loss_scaler(plan: dict) -> "ms.amp.LossScaler":
    """The loss scale `runtime.precision_plan` chose: a fixed one (1.0 = none), or dynamic under O1-O3."""
    if plan["loss_scale"] == "dynamic":
        return ms.amp.DynamicLossScaler(DYNAMIC_SCALE_START, scale_factor=2, scale_window=DYNAMIC_SCALE_WINDOW)
    return ms.amp.StaticLossScaler(float(plan["loss_scale"]))


def make_optimizer(opts: "Options", params: list) -> nn.Optimizer:
    """EDSR-PyTorch's choices: Adam (0.9, 0.999, 1e-8) or SGD with momentum. The lr is a tensor assigned in place at
    each epoch (a per-step lr list failed on resume: MindSpore reused an earlier instance's compiled graph)."""
    lr = ms.Tensor(opts.lr, ms.float32)
    if opts.optimizer == "SGD":
        return nn.SGD(params, learning_rate=lr, momentum=opts.momentum, weight_decay=opts.weight_decay)
    with mindspore_log_silenced():  # nn.Adam builds MindSpore's deprecated FusedSparseAdam and warns about it
        return nn.Adam(params, learning_rate=lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=opts.weight_decay)


class WeightedLoss(nn.Cell):
    """sum(weight * term(sr, hr)) over the terms of the `loss` option (EDSR-PyTorch's `1*L1+0.1*MSE`)."""

    TERMS = {"L1": nn.L1Loss, "MSE": nn.MSELoss}

    def __init__(self, terms):
        super().__init__()
        self.weights = tuple(float(w) for w, _ in terms)
        self.terms = nn.CellList([self.TERMS[name]() for _, name in terms])

    def construct(self, sr, hr):
        total = self.weights[0] * self.terms[0](sr, hr)
        for i in range(1, len(self.weights)):
            total = total + self.weights[i] * self.terms[i](sr, hr)
        return total


def make_loss(opts: "Options") -> nn.Cell:
    """The loss Cell for `opts.loss`; the recipe's plain `1*L1` is MindSpore's L1Loss itself."""
    terms = opts.loss_terms()
    if len(terms) == 1 and terms[0][0] == 1.0:
        return WeightedLoss.TERMS[terms[0][1]]()
    return WeightedLoss(terms)


_clip = ops.MultitypeFuncGraph("clip")


@_clip.register("Number", "Tensor")
def _clip_tensor(limit, grad):
    return ops.clamp(grad, -limit, limit)


_ema = ops.MultitypeFuncGraph("ema")


@_ema.register("Number", "Tensor", "Tensor")
def _ema_update(decay, average, weight):
    return ops.assign(average, average * decay + weight * (1.0 - decay))


class StepCounters(nn.Cell):
    """What the step counts on the device, read by the host every `print_every` steps: the loss summed over applied
    steps, the applied and the skipped steps, and the current run of skipped steps (which survives a read, so a
    run of non-finite steps is seen across reads)."""

    FIELDS = ("loss_sum", "applied", "skipped", "streak")

    def __init__(self):
        super().__init__()
        self.totals = Parameter(Tensor(np.zeros(4, np.float32)), name="train_step_totals", requires_grad=False)
        self._keep_streak = Tensor(np.eye(4, dtype=np.float32)[self.FIELDS.index("streak")])

    def construct(self, loss, finite):
        applied = finite.astype(ms.float32)
        t = self.totals
        counted = [
            t[0] + ops.select(finite, loss, ops.zeros_like(loss)),
            t[1] + applied,
            t[2] + 1.0 - applied,
            (t[3] + 1.0) * (1.0 - applied),
        ]
        return ops.assign(self.totals, ops.stack(counted))

    def restart(self):
        """Counts from zero, keeping the streak (a device op: no host synchronisation)."""
        ops.assign(self.totals, self.totals * self._keep_streak)

    def read(self):
        """{field: value} since the last read: the one host synchronisation; the counts restart."""
        totals = self.totals.asnumpy().copy()  # on CPU asnumpy() shares memory with the tensor
        self.restart()
        return dict(zip(self.FIELDS, map(float, totals), strict=True))


class TrainStep(nn.Cell):
    """One training step as one graph, after MindSpore's TrainOneStepWithLossScaleCell: forward, scaled loss,
    gradients, their mean over ranks, an overflow flag summed over ranks (so every rank skips the same steps),
    unscaling, optional clipping, the update, and the loss-scale adjustment. Nothing leaves the device: the step
    adds its loss and outcome to its `counters`, which the host reads every `print_every` steps."""

    def __init__(self, model, loss_fn, optimizer, scaler, world=1, gclip=0.0, ema_decay=0.0):
        super().__init__(auto_prefix=False)
        self.model, self.loss_fn, self.optimizer, self.scaler = model, loss_fn, optimizer, scaler
        self.world, self.gclip, self.ema_decay = int(world), float(gclip), float(ema_decay)
        # The EMA of the trained weights (BasicSR's net_g_ema), starting from the initial weights and updated in the
        # step graph after every applied step: identical on every rank, as the weights are.
        self.ema = ParameterTuple(
            [
                Parameter(Tensor(p.asnumpy().copy()), name=EMA_PREFIX + p.name, requires_grad=False)
                for p in optimizer.parameters
            ]
            if self.ema_decay > 0
            else []
        )
        self.multiscale = bool(getattr(getattr(model, "arch", None), "is_multiscale", False))
        self.hyper_map = ops.HyperMap()
        self.weights = optimizer.parameters
        self.grad_fn = ops.value_and_grad(self.scaled_loss, None, optimizer.parameters, has_aux=True)
        if self.world > 1:
            self.reducer = nn.DistributedGradReducer(optimizer.parameters, mean=True, degree=self.world)
            self.all_reduce = ops.AllReduce()  # sum
        self.counters = StepCounters()

    def scaled_loss(self, lr_img, hr_img, scale_index):
        sr = self.model(lr_img, scale_index) if self.multiscale else self.model(lr_img)
        loss = self.loss_fn(sr.astype(ms.float32), hr_img)
        return self.scaler.scale(loss), loss

    def construct(self, lr_img, hr_img, scale_index=0):
        """scale_index: an MDSR's branch for this batch, a constant (one graph per scale, each compiled once)."""
        (scaled, loss), grads = self.grad_fn(lr_img, hr_img, scale_index)
        if self.world > 1:
            grads = self.reducer(grads)
            loss = self.all_reduce(loss) / self.world
            # all_finite reads and clears the device's overflow status on 910A: after the loss all-reduce, so that
            # a saturated sum there is counted in this step, not carried into the next one.
            grads = ops.depend(grads, loss)
        grads = self.scaler.unscale(grads)
        # On Ascend all_finite reads the device's own overflow status, so each rank's verdict is summed over all.
        finite = ops.logical_and(ms.amp.all_finite(grads), ops.logical_and(ops.isfinite(loss), ops.isfinite(scaled)))
        overflow = 1.0 - finite.astype(ms.float32)
        if self.world > 1:
            overflow = self.all_reduce(overflow)
        finite = overflow < 0.5
        self.scaler.adjust(finite)
        if self.gclip > 0:
            grads = self.hyper_map(ops.partial(_clip, self.gclip), grads)
        if finite:
            loss = ops.depend(loss, self.optimizer(grads))
            if self.ema_decay > 0:
                loss = ops.depend(loss, self.hyper_map(ops.partial(_ema, self.ema_decay), self.ema, self.weights))
        loss = ops.depend(loss, self.counters(loss, finite))
        return loss, finite
