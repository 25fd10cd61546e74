"""The one options object: the seed's names, shared by notebook parameters, CLI flags and every component."""
from dataclasses import asdict, dataclass, fields
from typing import Optional

from .errors import KitError
from .model import PRESETS, Architecture


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
    seed: int = 1
    # checkpoints
    ckpt_save_path: str = "ckpt"
    ckpt_save_interval: int = 10
    ckpt_save_max: int = 5
    ckpt_path: str = ""
    resume: bool = False
    task_id: int = 0
    # precision and device
    amp_level: str = "O0"
    loss_scale: float = 0.0
    device_target: Optional[str] = None

    def __post_init__(self):
        self.device_target = self.device_target or None  # notebooks pass "" for "choose for me"
        if self.patch_size is None:
            self.patch_size = 48 * self.scale
        if self.model.upper() != "EDSR":
            raise KitError(f"model {self.model!r} is not supported (only EDSR)")
        if self.patch_size % self.scale:
            raise KitError(f"patch_size {self.patch_size} must be a multiple of scale {self.scale}")
        if self.amp_level not in ("O0", "O1", "O2", "O3"):
            raise KitError(f"amp_level must be O0, O1, O2 or O3, got {self.amp_level!r}")
        for name in ("test_every", "epochs", "batch_size", "ckpt_save_interval", "ckpt_save_max"):
            if getattr(self, name) < 1:
                raise KitError(f"{name} must be at least 1, got {getattr(self, name)}")
        self.decay_epochs()  # validates

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
    "batch_size": "patches per step on each device",
    "lr": "Adam learning rate",
    "decay": "epochs after which lr is multiplied by gamma, e.g. 200 or 200-400",
    "gamma": "lr decay factor",
    "seed": "random seed (weights and patch sampling)",
    "ckpt_save_path": "run folder: checkpoints, history.csv, curves.png, run.json",
    "ckpt_save_interval": "keep a numbered checkpoint every this many epochs",
    "ckpt_save_max": "numbered checkpoints kept at most",
    "ckpt_path": "initialise the weights from this checkpoint (e.g. x2 -> x3/x4 fine-tuning)",
    "resume": "continue from latest.ckpt in ckpt_save_path",
    "task_id": "task index (kept for the seed's scripts; not used in training)",
    "amp_level": "mixed precision O0 (float32), O1, O2 or O3",
    "loss_scale": "fixed loss scale; 0 = dynamic under O1-O3, none under O0",
    "device_target": "Ascend, GPU or CPU (default: $DEVICE_TARGET, else Ascend when present, else CPU)",
}
