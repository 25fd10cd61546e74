"""The one options object: the MindSpore ModelZoo EDSR's names, shared by notebook parameters, CLI flags and every
component."""

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional, Union

from .degradations import Degradation, RealisticRanges
from .errors import KitError
from .kernels import CONV_ALGORITHMS
from .model import MDSR_SCALES, MODELS, PRESETS, Architecture, check_size, parse_scales
from .records import TENSORBOARD_MODES
from .runtime import PRECISION_MODES
from .training_step import AMP_LEVELS, OPTIMIZERS, SINK_MODES, WeightedLoss


# A loss weight scales the gradients like the lr: beyond this the float32 loss of 0-255 images overflows (the
# recipe's weights are 1 and 0.1).
MAX_LOSS_WEIGHT = 1e3
MAX_BATCH_SIZE = 1024


# The network's fields keep Architecture's defaults: options name them flat (the ModelZoo EDSR's names), and
# `Options.architecture()` turns them back into an Architecture, which validates them.
NETWORK_DEFAULTS: dict = {f.name: f.default for f in fields(Architecture)}
# The realistic degradation's ranges likewise keep RealisticRanges' defaults (Real-ESRGAN's), as realistic_<name>.
REALISTIC_DEFAULTS = {f.name: f.default for f in fields(RealisticRanges)}


def option(default, help_text, recipe=False):
    """A field of Options with its help text (shown by `edsr train --help`): each option is declared once.
    `recipe`: part of the published training recipe, which batch runs on real data use whatever the training
    notebook's demo values (launch/recipe.py); data placement, devices and run folders are not."""
    return field(default=default, metadata={"help": help_text, "recipe": recipe})


@dataclass
class Options:
    """Flat fields with the ModelZoo EDSR's names (the public contract of notebooks, flags and checkpoints), in four
    groups, each checked by its own method when the options are made: data (`_validate_data`), model
    (`_validate_model`), schedule (`_validate_schedule`) and run: checkpoints, precision and device
    (`_validate_run`)."""

    # data
    dir_data: str = option("", "root folder of the datasets (DIV2K/, benchmark/)")
    data_train: str = option("sample", "training set: sample (built in), DIV2K, or a folder of HR images")
    data_test: str = option("sample", "validation set: sample, DIV2K, Set5, Set14, B100, Urban100, a folder, or none")
    data_range: str = option("1-800/801-810", "DIV2K index ranges train/test, e.g. 1-800/801-810")
    scale: Union[str, int] = option(
        NETWORK_DEFAULTS["scale"], "upscaling factor (2, 3, 4, ...); MDSR: several joined by '+', e.g. 2+3+4"
    )
    patch_size: Optional[int] = option(
        None,
        "EDSR: HR training patch size (default 48 * scale); MDSR: LR patch size (default 48), as EDSR-PyTorch",
        recipe=True,
    )
    rgb_range: int = option(int(NETWORK_DEFAULTS["rgb_range"]), "pixel range the network sees (255)")
    n_colors: int = option(NETWORK_DEFAULTS["n_colors"], "image channels (3)")
    no_augment: bool = option(False, "turn off the 8 flip/transpose augmentations", recipe=True)
    degradation: str = option(
        "bicubic",
        "how LR is made from HR: bicubic (BI), bd, bd-bicubic, dn or realistic (see degradations.py)",
        recipe=True,
    )
    realistic_blur_sigma: str = option(
        REALISTIC_DEFAULTS["blur_sigma"], "realistic: blur sigma range, first stage (HR pixels)"
    )
    realistic_blur_sigma2: str = option(REALISTIC_DEFAULTS["blur_sigma2"], "realistic: blur sigma range, second stage")
    realistic_resize: str = option(REALISTIC_DEFAULTS["resize"], "realistic: random resize factor range, first stage")
    realistic_resize2: str = option(
        REALISTIC_DEFAULTS["resize2"], "realistic: random resize factor range, second stage"
    )
    realistic_noise: str = option(
        REALISTIC_DEFAULTS["noise"], "realistic: Gaussian noise sigma range on 0-255, first stage"
    )
    realistic_noise2: str = option(
        REALISTIC_DEFAULTS["noise2"], "realistic: Gaussian noise sigma range on 0-255, second stage"
    )
    realistic_poisson: str = option(REALISTIC_DEFAULTS["poisson"], "realistic: Poisson noise scale range, first stage")
    realistic_poisson2: str = option(
        REALISTIC_DEFAULTS["poisson2"], "realistic: Poisson noise scale range, second stage"
    )
    realistic_jpeg: str = option(REALISTIC_DEFAULTS["jpeg"], "realistic: JPEG quality range, first stage")
    realistic_jpeg2: str = option(REALISTIC_DEFAULTS["jpeg2"], "realistic: JPEG quality range, second stage")
    num_workers: int = option(1, "data loading worker processes")
    # model
    model: str = option("EDSR", "network: EDSR (one scale) or MDSR (several scales in one network)")
    n_resblocks: int = option(NETWORK_DEFAULTS["n_resblocks"], "residual blocks (baseline 16, paper 32)", recipe=True)
    n_feats: int = option(NETWORK_DEFAULTS["n_feats"], "feature channels (baseline 64, paper 256)", recipe=True)
    res_scale: float = option(NETWORK_DEFAULTS["res_scale"], "residual scaling (baseline 1.0, paper 0.1)", recipe=True)
    # schedule (EDSR-PyTorch recipe)
    test_every: int = option(1000, "iterations per epoch", recipe=True)
    epochs: int = option(300, "number of epochs", recipe=True)
    batch_size: int = option(16, "patches per step on each device (global batch = batch_size x ranks)", recipe=True)
    lr: float = option(1e-4, "Adam learning rate", recipe=True)
    decay: str = option("200", "epochs after which lr is multiplied by gamma, e.g. 200 or 200-400", recipe=True)
    gamma: float = option(0.5, "lr decay factor", recipe=True)
    loss: str = option(
        "1*L1", "weighted loss terms in EDSR-PyTorch's syntax: 1*L1 (the recipe), 1*MSE, 1*L1+0.1*MSE", recipe=True
    )
    optimizer: str = option("ADAM", "ADAM (the recipe) or SGD", recipe=True)
    momentum: float = option(0.9, "SGD momentum", recipe=True)
    weight_decay: float = option(0.0, "L2 weight decay", recipe=True)
    gclip: float = option(0.0, "clip gradient elements to [-gclip, gclip] (0 = off)", recipe=True)
    ema_decay: float = option(
        0.0,
        "keep an exponential moving average of the weights with this decay (0 = off; BasicSR uses 0.999)",
        recipe=True,
    )
    seed: int = option(1, "random seed (weights and patch sampling)")
    print_every: int = option(
        100, "steps between loss reads for the progress bar (the only per-step host syncs)", recipe=True
    )
    # run: checkpoints, precision and device
    ckpt_save_path: str = option("ckpt", "run folder: checkpoints, history.csv, curves.png, run.json")
    ckpt_save_interval: int = option(10, "keep a numbered checkpoint every this many epochs", recipe=True)
    ckpt_save_max: int = option(5, "numbered checkpoints kept at most", recipe=True)
    tensorboard: str = option(
        "auto", "TensorBoard event files under <ckpt_save_path>/tb: auto (when tensorboardX is installed), on, off"
    )
    val_lpips: bool = option(
        False,
        "also score validation with LPIPS (AlexNet): lpips in history.csv, val/<set>/x<s>/lpips in TensorBoard; "
        "its trunk is fetched by name (cache it first for multi-device runs: edsr weights fetch lpips_alex)",
    )
    ckpt_path: str = option("", "initialise the weights from this checkpoint (e.g. x2 -> x3/x4 fine-tuning)")
    resume: bool = option(False, "continue from latest.ckpt in ckpt_save_path")
    overwrite: bool = option(
        False, "start a new run in a ckpt_save_path that holds an earlier run (its files are replaced)"
    )
    task_id: int = option(0, "task index: accepted so the ModelZoo EDSR's command lines run; the kit does not use it")
    amp_level: str = option("O0", "mixed precision O0 (float32), O1, O2 or O3", recipe=True)
    loss_scale: float = option(
        0.0, "fixed loss scale; 0 = dynamic under O1-O3; under O0 none on CPU/GPU, 1024 on Ascend", recipe=True
    )
    precision_mode: str = option(
        "", "Ascend: CANN precision mode, e.g. must_keep_origin_dtype for float32 convolutions"
    )
    deterministic: bool = option(
        False, "Ascend: deterministic kernels and HCCL (exact resume); CPU is always deterministic"
    )
    conv_algorithm: str = option(
        "auto",
        "CPU 3x3 convolutions: auto (Winograd where it pays), direct, winograd (F(4x4,3x3)) or winograd2x2 "
        "(F(2x2,3x3), about half F(4x4)'s float32 error; docs/benchmarks.md)",
    )
    dataset_sink: str = option("auto", "auto, on or off: run print_every steps per device call (Ascend/GPU data sink)")
    allow_large_model: bool = option(False, "allow more than 256 residual blocks or 1024 features")
    device_target: Optional[str] = option(
        None, "Ascend, GPU or CPU (default: $DEVICE_TARGET, else Ascend when present, else CPU)"
    )

    def __post_init__(self):
        self.device_target = self.device_target or None  # notebooks pass "" for "choose for me"
        self._validate_model()
        self._validate_data()
        self._validate_schedule()
        self._validate_run()

    def _validate_model(self):
        self.model = str(self.model).upper()
        if self.model not in MODELS:
            raise KitError(f"model {self.model!r} is not supported; choose one of {', '.join(MODELS)}")
        scales = parse_scales(self.scale)
        if len(scales) > 1 and self.model == "EDSR":
            raise KitError(f"scale {self.scale}: several scales in one network need model MDSR (--model MDSR)")
        # One scale stays an int (the ModelZoo EDSR's option); several are written as EDSR-PyTorch does, "2+3+4".
        self.scale = scales[0] if len(scales) == 1 else "+".join(map(str, scales))
        self._check_numbers({"res_scale": lambda v: v > 0, "rgb_range": lambda v: v > 0}, n_resblocks=0, n_feats=1)
        if self.n_colors != 3:
            raise KitError(f"n_colors must be 3 (the kit trains and evaluates RGB images), got {self.n_colors!r}")
        check_size(self.architecture(), self.allow_large_model)

    def _validate_data(self):
        if self.patch_size is None:
            self.patch_size = 48 if self.model == "MDSR" else 48 * self.scales()[0]
        self._check_numbers({}, patch_size=1, num_workers=1)
        if self.model == "EDSR" and self.patch_size % self.scale:
            raise KitError(f"patch_size {self.patch_size} must be a multiple of scale {self.scale}")
        self.degradation = str(self.degradation).lower()
        self.degradation_model()  # validates

    def _validate_schedule(self):
        # lr: Adam's steps are about lr in size whatever the gradient; beyond 1 the 0-255 network's weights jump by
        # more than their own scale in one step and training diverges at once (the recipe uses 1e-4).
        rules = {
            "lr": lambda v: 0 < v <= 1,
            "gamma": lambda v: v > 0,
            "momentum": lambda v: 0 <= v < 1,
            "weight_decay": lambda v: v >= 0,
            "gclip": lambda v: v >= 0,
            "ema_decay": lambda v: 0 <= v < 1,
        }
        self._check_numbers(rules, seed=0, test_every=1, epochs=1, batch_size=1, print_every=1)
        if self.batch_size > MAX_BATCH_SIZE:
            raise KitError(
                f"batch_size {self.batch_size} is per device: above {MAX_BATCH_SIZE} no card holds the activations "
                "(the recipe uses 16 in all, e.g. 2 per card on 8 cards)"
            )
        self.optimizer = str(self.optimizer).upper()
        if self.optimizer not in OPTIMIZERS:
            raise KitError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        self.decay_epochs()  # validates
        self.loss_terms()  # validates

    def _validate_run(self):
        self._check_numbers({"loss_scale": lambda v: v >= 0}, ckpt_save_interval=1, ckpt_save_max=1)
        if self.amp_level not in AMP_LEVELS:
            levels = f"{', '.join(AMP_LEVELS[:-1])} or {AMP_LEVELS[-1]}"
            raise KitError(f"amp_level must be {levels}, got {self.amp_level!r}")
        if str(self.dataset_sink).lower() not in SINK_MODES:
            raise KitError(f"dataset_sink must be auto, on or off, got {self.dataset_sink!r}")
        self.conv_algorithm = str(self.conv_algorithm).lower()
        if self.conv_algorithm not in CONV_ALGORITHMS:
            raise KitError(f"conv_algorithm must be one of {', '.join(CONV_ALGORITHMS)}, got {self.conv_algorithm!r}")
        self.tensorboard = str(self.tensorboard).lower()
        if self.tensorboard not in TENSORBOARD_MODES:
            raise KitError(f"tensorboard must be one of {', '.join(TENSORBOARD_MODES)}, got {self.tensorboard!r}")
        if self.precision_mode and self.precision_mode not in PRECISION_MODES:
            raise KitError(f"precision_mode must be one of {', '.join(PRECISION_MODES)}, got {self.precision_mode!r}")

    def loss_terms(self):
        """`loss` as [(weight, name)]: "1*L1+0.1*MSE" -> [(1.0, "L1"), (0.1, "MSE")], as EDSR-PyTorch writes it."""
        terms = []
        for part in str(self.loss).replace(" ", "").split("+"):
            weight, _, name = part.rpartition("*")
            try:
                value = float(weight) if weight else 1.0
            except ValueError:
                value = float("nan")
            losses = tuple(WeightedLoss.TERMS)
            if name.upper() not in losses or not math.isfinite(value) or not 0 < value <= MAX_LOSS_WEIGHT:
                raise KitError(
                    f"loss {self.loss!r}: each term is WEIGHT*NAME with a weight in (0, {MAX_LOSS_WEIGHT:g}] and "
                    f"NAME one of {', '.join(losses)}, e.g. 1*L1+0.1*MSE"
                )
            terms.append((value, name.upper()))
        return terms

    def _check_numbers(self, rules, **integers):
        """Numeric options before any work starts (a NaN lr or a negative seed would otherwise train garbage or fail
        deep inside MindSpore): each of `rules` {name: predicate} a finite number passing its predicate, each of
        `integers` {name: lowest} an integer at least that."""

        def number(name, kind=(int, float)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
                raise KitError(f"{name} must be a finite number, got {value!r:.60}")
            return value

        for name, ok in rules.items():
            if not ok(number(name)):
                raise KitError(f"{name} {getattr(self, name)!r} is out of range")
        for name, low in integers.items():
            value = number(name, int)
            if value < low:
                raise KitError(f"{name} must be at least {low}, got {value}")

    @classmethod
    def recipe_fields(cls) -> list[str]:
        """The options that make up the published training recipe (declared with `recipe=True`)."""
        return [f.name for f in fields(cls) if f.metadata["recipe"]]

    @classmethod
    def for_preset(cls, preset: str, **overrides) -> "Options":
        """EDSR-PyTorch's recipe for `baseline`, `paper`, `mdsr_baseline` or `mdsr` (scales 2+3+4 unless
        overridden), with overrides."""
        if preset not in PRESETS:
            raise KitError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        values: dict = {**PRESETS[preset], **overrides}
        if values.get("model") == "MDSR":
            values.setdefault("scale", "+".join(map(str, MDSR_SCALES)))
        return cls(**values)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], strict: bool = True) -> "Options":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown and strict:
            raise KitError(f"unknown option(s): {', '.join(sorted(unknown))}")
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def from_namespace(cls, namespace: Mapping[str, Any]) -> "Options":
        """The options among a notebook's variables (its parameters cell), ignoring everything else."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in namespace.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)

    def degradation_model(self):
        """The `degradations.Degradation` the datasets make their LR with (the kind, the seed and the ranges)."""
        return Degradation.from_options(self)

    def scales(self) -> tuple[int, ...]:
        """The scales trained: (2,) for EDSR x2, (2, 3, 4) for MDSR with scale "2+3+4"."""
        return parse_scales(self.scale)

    def lr_patch(self, scale):
        """The LR training patch at `scale`: patch_size // scale for EDSR; patch_size itself for MDSR, whose HR
        patch is then patch_size * scale (EDSR-PyTorch's multi-scale rule)."""
        return self.patch_size if self.model == "MDSR" else self.patch_size // scale

    def architecture(self) -> Architecture:
        scales = self.scales()
        network = {k: v for k, v in self.to_dict().items() if k in NETWORK_DEFAULTS}
        network.update(rgb_range=float(self.rgb_range), scale=scales[0], scales=scales, model=self.model)
        return Architecture.from_dict(network)

    def decay_epochs(self):
        """'200' or '200-400' -> [200, 400]: the epochs after which lr is multiplied by gamma."""
        parts = str(self.decay).split("-")
        if not all(part.strip().isdigit() for part in parts):  # "-5" or "200-" is a typo, not epoch 5
            raise KitError(f"decay must be positive epochs like '200' or '200-400', got {self.decay!r}")
        milestones = [int(x) for x in parts]
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

    def learning_rate(self, epoch: int) -> float:
        """lr during (0-based) `epoch`: halved (times gamma) once for every milestone already passed."""
        return self.lr * self.gamma ** sum(epoch >= m for m in self.decay_epochs())
