"""The one options object: the MindSpore ModelZoo EDSR's names, shared by notebook parameters, CLI flags and every
component."""

import math
from dataclasses import asdict, dataclass, fields
from typing import Optional

from .errors import KitError
from .model import PRESETS, Architecture, check_size


OPTIMIZERS = ("ADAM", "SGD")
LOSSES = ("L1", "MSE")
# CANN's operator precision modes (mindspore.device_context.ascend.op_precision.precision_mode).
PRECISION_MODES = (
    "force_fp16",
    "allow_fp32_to_fp16",
    "allow_mix_precision",
    "must_keep_origin_dtype",
    "force_fp32",
    "allow_fp32_to_bf16",
    "allow_mix_precision_fp16",
    "allow_mix_precision_bf16",
)


@dataclass
class Options:
    # data
    dir_data: str = ""
    data_train: str = "sample"
    data_test: str = "sample"
    data_range: str = "1-800/801-810"
    scale: int = 2
    patch_size: Optional[int] = None  # HR patch; None = 48 * scale (the recipe: LR patch 48)
    rgb_range: int = 255
    n_colors: int = 3
    no_augment: bool = False
    num_workers: int = 1
    # model
    model: str = "EDSR"
    n_resblocks: int = 16
    n_feats: int = 64
    res_scale: float = 1.0
    # schedule (EDSR-PyTorch recipe)
    test_every: int = 1000
    epochs: int = 300
    batch_size: int = 16
    lr: float = 1e-4
    decay: str = "200"
    gamma: float = 0.5
    loss: str = "1*L1"  # EDSR-PyTorch's syntax: weighted terms, e.g. 1*L1+0.1*MSE
    optimizer: str = "ADAM"  # ADAM (the recipe) or SGD, as in EDSR-PyTorch
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0
    gclip: float = 0.0  # clip every gradient element to [-gclip, gclip]; 0 = off
    seed: int = 1
    print_every: int = 100  # steps between host reads of the loss (progress bar); also the dataset-sink size
    # checkpoints
    ckpt_save_path: str = "ckpt"
    ckpt_save_interval: int = 10
    ckpt_save_max: int = 5
    ckpt_path: str = ""
    resume: bool = False
    overwrite: bool = False  # start a new run in a folder holding an earlier run's checkpoints
    task_id: int = 0
    # precision and device
    amp_level: str = "O0"
    loss_scale: float = 0.0
    precision_mode: str = ""  # Ascend only: CANN precision mode; "" = the chip's default (see README)
    deterministic: bool = False  # Ascend only (CPU always is): bit-exact reruns and resume, somewhat slower
    dataset_sink: str = "auto"  # auto (on for Ascend/GPU), on, off: feed print_every steps per device call
    allow_large_model: bool = False  # lift the size limits of model.check_size
    device_target: Optional[str] = None

    def __post_init__(self):
        self.device_target = self.device_target or None  # notebooks pass "" for "choose for me"
        if self.patch_size is None and isinstance(self.scale, int):
            self.patch_size = 48 * self.scale
        self._check_numbers()
        check_size(self.architecture(), self.allow_large_model)
        if self.model.upper() != "EDSR":
            raise KitError(f"model {self.model!r} is not supported (only EDSR)")
        if self.patch_size % self.scale:
            raise KitError(f"patch_size {self.patch_size} must be a multiple of scale {self.scale}")
        if self.amp_level not in ("O0", "O1", "O2", "O3"):
            raise KitError(f"amp_level must be O0, O1, O2 or O3, got {self.amp_level!r}")
        self.optimizer = str(self.optimizer).upper()
        if self.optimizer not in OPTIMIZERS:
            raise KitError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if str(self.dataset_sink).lower() not in ("auto", "on", "off", "true", "false"):
            raise KitError(f"dataset_sink must be auto, on or off, got {self.dataset_sink!r}")
        if self.precision_mode and self.precision_mode not in PRECISION_MODES:
            raise KitError(f"precision_mode must be one of {', '.join(PRECISION_MODES)}, got {self.precision_mode!r}")
        if self.gclip < 0:
            raise KitError(f"gclip must be 0 (off) or positive, got {self.gclip}")
        self.decay_epochs()  # validates
        self.loss_terms()  # validates

    def loss_terms(self):
        """`loss` as [(weight, name)]: "1*L1+0.1*MSE" -> [(1.0, "L1"), (0.1, "MSE")], as EDSR-PyTorch writes it."""
        terms = []
        for part in str(self.loss).replace(" ", "").split("+"):
            weight, _, name = part.rpartition("*")
            try:
                value = float(weight) if weight else 1.0
            except ValueError:
                value = float("nan")
            if name.upper() not in LOSSES or not math.isfinite(value) or value <= 0:
                raise KitError(
                    f"loss {self.loss!r}: each term is WEIGHT*NAME with a positive weight and NAME one of "
                    f"{', '.join(LOSSES)}, e.g. 1*L1+0.1*MSE"
                )
            terms.append((value, name.upper()))
        return terms

    def _check_numbers(self):
        """Every numeric option, before any work starts: a NaN lr or a negative seed would otherwise train garbage
        or fail deep inside MindSpore."""

        def number(name, kind=(int, float)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
                raise KitError(f"{name} must be a finite number, got {value!r}")
            return value

        rules = {
            "lr": lambda v: v > 0,
            "gamma": lambda v: v > 0,
            "res_scale": lambda v: v > 0,
            "rgb_range": lambda v: v > 0,
            "momentum": lambda v: 0 <= v < 1,
            "weight_decay": lambda v: v >= 0,
            "loss_scale": lambda v: v >= 0,
            "gclip": lambda v: v >= 0,
        }
        for name, ok in rules.items():
            if not ok(number(name)):
                raise KitError(f"{name} {getattr(self, name)!r} is out of range")
        integers = {
            "scale": 1,
            "patch_size": 1,
            "num_workers": 1,
            "seed": 0,
            "n_resblocks": 0,
            "n_feats": 1,
            "test_every": 1,
            "epochs": 1,
            "batch_size": 1,
            "ckpt_save_interval": 1,
            "ckpt_save_max": 1,
            "print_every": 1,
            "task_id": 0,
        }
        for name, low in integers.items():
            value = number(name, int)
            if value < low:
                raise KitError(f"{name} must be at least {low}, got {value}")
        if self.n_colors != 3:
            raise KitError(f"n_colors must be 3 (the kit trains and evaluates RGB images), got {self.n_colors!r}")

    @classmethod
    def for_preset(cls, preset, **overrides):
        """EDSR-PyTorch's recipe for `baseline` or `paper`, with overrides."""
        if preset not in PRESETS:
            raise KitError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[preset], **overrides})

    @classmethod
    def from_dict(cls, values, strict=True):
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown and strict:
            raise KitError(f"unknown option(s): {', '.join(sorted(unknown))}")
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def from_namespace(cls, namespace):
        """The options among a notebook's variables (its parameters cell), ignoring everything else."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in namespace.items() if k in known})

    def to_dict(self):
        return asdict(self)

    def architecture(self):
        return Architecture.from_dict({**self.to_dict(), "rgb_range": float(self.rgb_range)})

    def decay_epochs(self):
        """'200' or '200-400' -> [200, 400]: the epochs after which lr is multiplied by gamma."""
        try:
            milestones = [int(x) for x in str(self.decay).split("-") if x.strip()]
        except ValueError:
            raise KitError(f"decay must look like '200' or '200-400', got {self.decay!r}") from None
        if milestones != sorted(milestones) or any(m < 1 for m in milestones):
            raise KitError(f"decay epochs must be positive and increasing, got {self.decay!r}")
        return milestones

    def sink_mode(self, device):
        """Whether training feeds the device `sync_every()` steps per call (MindSpore's data_sink: Ascend and GPU)."""
        choice = str(self.dataset_sink).lower()
        if choice in ("off", "false"):
            return False
        if device in ("Ascend", "GPU"):
            return True
        if choice in ("on", "true"):
            raise KitError(f"dataset_sink on needs Ascend or GPU (MindSpore's data_sink); this run is on {device}")
        return False

    def sync_every(self):
        """Steps between host reads of the loss: the largest divisor of test_every not above print_every, so every
        epoch ends on a read."""
        return max(d for d in range(1, min(self.print_every, self.test_every) + 1) if self.test_every % d == 0)

    def learning_rate(self, epoch):
        """lr during (0-based) `epoch`: halved (times gamma) once for every milestone already passed."""
        return self.lr * self.gamma ** sum(epoch >= m for m in self.decay_epochs())


OPTION_HELP = {
    "dir_data": "root folder of the datasets (DIV2K/, benchmark/)",
    "data_train": "training set: sample (built in), DIV2K, or a folder of HR images",
    "data_test": "validation set: sample, DIV2K, Set5, Set14, B100, Urban100, a folder, or none",
    "data_range": "DIV2K index ranges train/test, e.g. 1-800/801-810",
    "scale": "upscaling factor (2, 3, 4, ...)",
    "patch_size": "HR training patch size (default 48 * scale)",
    "rgb_range": "pixel range the network sees (255)",
    "n_colors": "image channels (3)",
    "no_augment": "turn off the 8 flip/transpose augmentations",
    "num_workers": "data loading worker processes",
    "model": "network (EDSR)",
    "n_resblocks": "residual blocks (baseline 16, paper 32)",
    "n_feats": "feature channels (baseline 64, paper 256)",
    "res_scale": "residual scaling (baseline 1.0, paper 0.1)",
    "test_every": "iterations per epoch",
    "epochs": "number of epochs",
    "batch_size": "patches per step on each device (global batch = batch_size x ranks)",
    "lr": "Adam learning rate",
    "decay": "epochs after which lr is multiplied by gamma, e.g. 200 or 200-400",
    "gamma": "lr decay factor",
    "loss": "weighted loss terms in EDSR-PyTorch's syntax: 1*L1 (the recipe), 1*MSE, 1*L1+0.1*MSE",
    "optimizer": "ADAM (the recipe) or SGD",
    "momentum": "SGD momentum",
    "weight_decay": "L2 weight decay",
    "gclip": "clip gradient elements to [-gclip, gclip] (0 = off)",
    "seed": "random seed (weights and patch sampling)",
    "print_every": "steps between loss reads for the progress bar (the only per-step host syncs)",
    "ckpt_save_path": "run folder: checkpoints, history.csv, curves.png, run.json",
    "ckpt_save_interval": "keep a numbered checkpoint every this many epochs",
    "ckpt_save_max": "numbered checkpoints kept at most",
    "ckpt_path": "initialise the weights from this checkpoint (e.g. x2 -> x3/x4 fine-tuning)",
    "resume": "continue from latest.ckpt in ckpt_save_path",
    "overwrite": "start a new run in a ckpt_save_path that holds an earlier run (its files are replaced)",
    "task_id": "task index (kept for the ModelZoo EDSR's scripts; not used in training)",
    "amp_level": "mixed precision O0 (float32), O1, O2 or O3",
    "loss_scale": "fixed loss scale; 0 = dynamic under O1-O3; under O0 none on CPU/GPU, 1024 on Ascend",
    "precision_mode": "Ascend: CANN precision mode, e.g. must_keep_origin_dtype for float32 convolutions",
    "deterministic": "Ascend: deterministic kernels and HCCL (exact resume); CPU is always deterministic",
    "dataset_sink": "auto, on or off: run print_every steps per device call (Ascend/GPU data sink)",
    "allow_large_model": "allow more than 256 residual blocks or 1024 features",
    "device_target": "Ascend, GPU or CPU (default: $DEVICE_TARGET, else Ascend when present, else CPU)",
}
