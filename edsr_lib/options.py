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
    patch_size: int = 96
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
    loss_scale: float = 1.0
    device_target: Optional[str] = None

    def __post_init__(self):
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
