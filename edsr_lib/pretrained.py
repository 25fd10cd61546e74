"""Published weights by name: the eight EDSR-PyTorch files, the ImageNet trunks LPIPS needs, their mirrors, the
local cache, and the user's own names.

`resolve("edsr_baseline_x2")` returns a kit checkpoint, downloading the published `.pt` on first use from the
mirrors the user gives (`--mirror`, `EDSR_WEIGHTS_MIRROR`), then the official host, verifying it against the hash
prefix in its file name (the first 8 hex digits of its SHA-256, the torch hub convention) and converting it once.
A file that does not match is deleted. `edsr weights add NAME PATH` gives the user's own checkpoints names too.
Cache: `<user cache>/weights/` holds the `.pt` files, the converted `<name>.ckpt` and `registered.json`. A trunk
torchvision already downloaded (`$TORCH_HOME/hub/checkpoints`, default `~/.cache/torch/hub/checkpoints`) is used
where it is, once its hash matches.
"""

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .download import fetch, partial_path, resumable_from, sha256_of
from .errors import KitError
from .files import atomic_write, user_cache_dir, write_json
from .model import Architecture, upsampling_factors
from .weights import convert, read_checkpoint

OFFICIAL_BASE = "https://cv.snu.ac.kr/research/EDSR/models/"
TORCHVISION_BASE = "https://download.pytorch.org/models/"
MIRROR_VARIABLE = "EDSR_WEIGHTS_MIRROR"  # base URLs separated by spaces or commas, tried before the official host
MIRROR_INDEX = "SHA256SUMS"
MAX_REGISTRY_BYTES = 1 << 20  # registered.json: a name and a path per entry; a larger file is not the kit's


@dataclass(frozen=True)
class Published:
    """One published weight file: `file` carries its SHA-256 prefix after the last '-'. `arch`: the SR model it
    holds (converted to a kit checkpoint on first use); None for an LPIPS trunk, used as it is, of at most
    `size_bound` bytes, from `official` (the registry's official host when None)."""

    name: str
    file: str
    arch: Architecture | None
    official: str | None = None
    size_bound: int = 0
    about: str = ""

    @property
    def hash_prefix(self):
        return self.file.rsplit("-", 1)[1].split(".")[0]

    @property
    def max_bytes(self):
        """A download longer than this is not the file: the float32 weights plus the pickle's keys and framing."""
        return (weights_bytes(self.arch) if self.arch else self.size_bound) + (1 << 20)


def _edsr(preset, scale):
    return Architecture.from_preset(preset, scale)


PUBLISHED = (
    Published("edsr_baseline_x2", "edsr_baseline_x2-1bc95232.pt", _edsr("baseline", 2)),
    Published("edsr_baseline_x3", "edsr_baseline_x3-abf2a44e.pt", _edsr("baseline", 3)),
    Published("edsr_baseline_x4", "edsr_baseline_x4-6b446fab.pt", _edsr("baseline", 4)),
    Published("edsr_x2", "edsr_x2-0edfb8a3.pt", _edsr("paper", 2)),
    Published("edsr_x3", "edsr_x3-ea3ef2c6.pt", _edsr("paper", 3)),
    Published("edsr_x4", "edsr_x4-4f62e9ef.pt", _edsr("paper", 4)),
    Published("mdsr_baseline", "mdsr_baseline-a00cab12.pt", Architecture.from_preset("mdsr_baseline")),
    Published("mdsr", "mdsr-4a78bedf.pt", Architecture.from_preset("mdsr")),
    # LPIPS' ImageNet trunks as torchvision publishes them (BSD-3-Clause, torchvision): the `lpips` package's
    # networks start from these; its linear heads ship with the kit (assets/lpips, BSD-2-Clause).
    Published(
        "lpips_alex",
        "alexnet-owt-7be5be79.pth",
        None,
        TORCHVISION_BASE,
        61_100_840 * 4,
        "LPIPS trunk: torchvision AlexNet, ImageNet (61.10 M parameters)",
    ),
    Published(
        "lpips_vgg",
        "vgg16-397923af.pth",
        None,
        TORCHVISION_BASE,
        138_357_544 * 4,
        "LPIPS trunk: torchvision VGG16, ImageNet (138.36 M parameters)",
    ),
)


def parameter_count(arch):
    """Trainable parameters of `arch`, from the layer shapes (no network is built)."""

    def conv(cin, cout, k=3):
        return cin * cout * k * k + cout

    f, c = arch.n_feats, arch.n_colors
    body = 2 * arch.n_resblocks * conv(f, f) + conv(f, f)
    upsamplers = sum(conv(f, factor * factor * f) for s in arch.scales for factor in upsampling_factors(s))
    extra = len(arch.scales) * 4 * conv(f, f, 5) if arch.is_multiscale else 0
    return conv(c, f) + body + upsamplers + extra + conv(f, c)


def weights_bytes(arch):
    """The bytes of `arch`'s float32 weights: what a file holding them has at least."""
    return 4 * parameter_count(arch)


def describe(arch):
    """'EDSR x2, 16 blocks, 64 features (1.37 M parameters)'."""
    millions = parameter_count(arch) / 1e6
    return f"{arch.name}, {arch.n_resblocks} blocks, {arch.n_feats} features ({millions:.2f} M parameters)"


def mirrors_from(given=(), environ=None, official=OFFICIAL_BASE):
    """Base URLs in the order they are tried: those given, then $EDSR_WEIGHTS_MIRROR's, then the official host."""
    environ = os.environ if environ is None else environ
    from_env = environ.get(MIRROR_VARIABLE, "").replace(",", " ").split()
    bases = [*given, *from_env, official]
    return [b if b.endswith("/") else b + "/" for b in dict.fromkeys(bases)]


class Registry:
    """Names -> checkpoints: the published files and the user's own names, cached under `cache_dir` (default
    `<user cache>/weights`). Tests give their own `published` files and `official` host."""

    def __init__(self, published=PUBLISHED, cache_dir=None, official=OFFICIAL_BASE):
        self.published = {p.name: p for p in published}
        self.cache_dir = Path(cache_dir) if cache_dir else user_cache_dir() / "weights"
        self.official = official

    # ---- the user's own names ------------------------------------------------------------------------------
    @property
    def _own_path(self):
        return self.cache_dir / "registered.json"

    def own(self):
        """name -> {"path", "arch"} of the checkpoints registered with `add`. A published name found there (the
        file was edited by hand) is ignored: the published, verified file always wins."""
        if not self._own_path.is_file():
            return {}
        try:
            if self._own_path.stat().st_size > MAX_REGISTRY_BYTES:
                raise ValueError(f"larger than {MAX_REGISTRY_BYTES // 1024} KB: not a record the kit wrote")
            entries = json.loads(self._own_path.read_text())
            if not isinstance(entries, dict) or not all(
                isinstance(e, dict) and isinstance(e.get("path"), str) for e in entries.values()
            ):
                raise ValueError("not a name -> checkpoint record")
        except (OSError, ValueError, RecursionError) as exc:
            raise KitError(f"{self._own_path}: unreadable ({exc}); delete it and add the names again") from None
        return {name: entry for name, entry in entries.items() if name not in self.published}

    @contextlib.contextmanager
    def _locked(self):
        """registered.json is read, changed and written by one process at a time (concurrent `weights add`)."""
        import fcntl

        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with open(self.cache_dir / "registered.json.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def add(self, name, path):
        """Register the checkpoint at `path` (any format `read_checkpoint` reads) under `name`."""
        if not name.replace("_", "").replace("-", "").isalnum() or len(name) > 100:
            raise KitError(f"weights name {name!r}: use up to 100 letters, digits, '_' and '-'")
        if name in self.published:
            raise KitError(f"{name} is a published weights name; choose another")
        path = Path(path).resolve()
        if path.is_dir():
            raise KitError(f"{path}: is a folder; give the checkpoint file (e.g. {path / 'best.ckpt'})")
        arch, _, _ = read_checkpoint(path)
        with self._locked():
            entries = self.own()
            entries[name] = {"path": str(path), "arch": describe(arch)}
            write_json(self._own_path, entries)
        return arch

    def remove(self, name):
        with self._locked():
            entries = self.own()
            if name not in entries:
                raise KitError(f"{name}: not a registered name (edsr weights list shows them)")
            del entries[name]
            write_json(self._own_path, entries)

    # ---- the published files -------------------------------------------------------------------------------
    def pt_path(self, entry):
        return self.cache_dir / entry.file

    def ckpt_path(self, entry):
        return self.cache_dir / f"{entry.name}.ckpt"

    def models(self):
        """The published names that are SR models (the LPIPS trunks are not)."""
        return [name for name, entry in self.published.items() if entry.arch is not None]

    def status(self, entry):
        if entry.arch is None:
            return "downloaded" if self._cached_pt(entry) else "-"
        ckpt = self.ckpt_path(entry)
        if ckpt.is_file():  # a file shorter than its float32 weights is truncated (fetch converts it again)
            return "converted" if ckpt.stat().st_size >= weights_bytes(entry.arch) else "damaged"
        return "downloaded" if self.pt_path(entry).is_file() else "-"

    def rows(self):
        """What `edsr weights list` prints: (name, file, size, architecture, cached) per entry."""
        rows = []
        for entry in self.published.values():
            size = (entry.max_bytes - (1 << 20)) / 1e6
            about = describe(entry.arch) if entry.arch else entry.about
            rows.append((entry.name, entry.file, f"{size:.1f} MB", about, self.status(entry)))
        for name, own in self.own().items():
            cached = "yes" if Path(own["path"]).is_file() else "missing"
            rows.append((name, own["path"], "", own.get("arch", ""), cached))
        return rows

    def entry(self, name):
        if name not in self.published:
            raise KitError(f"{name}: no such weights; published: {', '.join(self.published)}")
        return self.published[name]

    def check_hash(self, entry, path, digest=None):
        """Refuse (and delete) a file whose SHA-256 (`digest`, computed when not given) does not start with the
        prefix in its published name; returns the SHA-256."""
        digest = digest or sha256_of(path)
        if not digest.startswith(entry.hash_prefix):
            Path(path).unlink(missing_ok=True)
            raise KitError(
                f"{entry.file}: SHA-256 {digest[:16]}... does not start with {entry.hash_prefix} as its name says: "
                "not the published file (removed)"
            )
        return digest

    def download(self, name, mirrors=(), offline=False, progress=True, log=print):
        """(path, SHA-256) of the published `.pt` for `name` in the cache, fetched from the first mirror that
        serves a file with the right hash; each failure is logged in one line."""
        entry = self.entry(name)
        target = self.pt_path(entry)
        if target.is_file():
            return target, self.check_hash(entry, target)
        found = self._cached_pt(entry)
        if found:  # torchvision's cache: used in place, never deleted (it is not the kit's)
            digest = sha256_of(found)
            if digest.startswith(entry.hash_prefix):
                return found, digest
            log(f"{name}: {found} does not have the published hash; not used")
        if offline:
            raise KitError(self._place_by_hand(entry, "offline"))
        bases = mirrors_from(mirrors, official=entry.official or self.official)
        limit = entry.max_bytes
        for base in bases:
            url = base + entry.file
            resumed = resumable_from(target, url)
            for attempt in range(2):
                try:
                    digest = fetch(url, target, progress=progress, whole_file_check=False, max_bytes=limit)
                    return target, self.check_hash(entry, target, digest)
                except KitError as exc:
                    log(f"{name}: {exc}")
                # a resumed file that fails its hash may be a good mirror's tail on a bad start: once more from 0
                if not (resumed and attempt == 0 and not partial_path(target).exists()):
                    break
                log(f"{name}: trying {url} again from the start")
        raise KitError(self._place_by_hand(entry, f"no mirror served it ({len(bases)} tried)"))

    def _place_by_hand(self, entry, why):
        return (
            f"{entry.name}: {why}; download {entry.file} (e.g. {entry.official or self.official}{entry.file}) and "
            f"place it at {self.pt_path(entry)}"
        )

    def _cached_pt(self, entry):
        """The entry's file in the kit's cache, else (trunks only) in torchvision's; None when in neither."""
        places = [self.pt_path(entry)]
        if entry.arch is None:
            torch_home = os.environ.get("TORCH_HOME") or Path.home() / ".cache" / "torch"
            places.append(Path(torch_home) / "hub" / "checkpoints" / entry.file)
        return next((p for p in places if p.is_file()), None)

    def fetch(self, name, mirrors=(), offline=False, progress=True, log=print):
        """A kit checkpoint for a published name: downloaded, verified and converted on first use, then cached."""
        entry = self.entry(name)
        if entry.arch is None:  # an LPIPS trunk: read as it is
            return self.download(name, mirrors, offline, progress, log)[0]
        ckpt = self.ckpt_path(entry)
        if ckpt.is_file():
            try:
                read_checkpoint(ckpt)
                return ckpt
            except KitError as exc:  # truncated or damaged in the cache: made again from the verified file
                log(f"{name}: the converted {ckpt.name} does not load ({exc}); converting again")
                ckpt.unlink()
        pt, _ = self.download(name, mirrors, offline, progress, log)
        arch = convert(pt, ckpt)
        log(f"{name}: {describe(arch)} -> {ckpt}")
        return ckpt

    def resolve(self, spec, mirrors=(), offline=False, progress=True, log=print):
        """A checkpoint path for `spec`: an existing file as it is, else a registered or published name."""
        path = Path(spec)
        if path.is_file() or path.suffix in (".ckpt", ".pt", ".pth") or os.sep in str(spec):
            return path  # a path: read_checkpoint says what is wrong with it
        if spec in self.published:  # before the user's names: a published name always means the verified file
            if self.published[spec].arch is None:
                raise KitError(f"{spec}: {self.published[spec].about}, not an SR model")
            return self.fetch(spec, mirrors, offline, progress, log)
        own = self.own()
        if spec in own:
            if not Path(own[spec]["path"]).is_file():
                raise KitError(f"{spec}: its checkpoint {own[spec]['path']} is gone (edsr weights remove {spec})")
            return Path(own[spec]["path"])
        names = [*self.published, *own]
        raise KitError(f"{spec}: no such checkpoint file or weights name (names: {', '.join(names)})")

    def write_mirror(self, folder, names=None, mirrors=(), progress=True, log=print):
        """A folder a static web server can serve as a mirror: the published files plus SHA256SUMS (the format
        `sha256sum -c` reads). Files are fetched into the cache first when missing."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        sums = self._mirror_index(folder)
        for name in names or self.models():
            entry = self.entry(name)
            source, digest = self.download(name, mirrors, progress=progress, log=log)
            target = folder / entry.file
            if not (target.is_file() and sha256_of(target) == digest):
                atomic_write(target, lambda tmp, source=source: shutil.copyfile(source, tmp))
            sums[entry.file] = digest
        text = "".join(f"{digest}  {file}\n" for file, digest in sorted(sums.items()))
        atomic_write(folder / MIRROR_INDEX, lambda tmp: Path(tmp).write_text(text))
        return folder

    @staticmethod
    def _mirror_index(folder):
        """file -> SHA-256 of an existing SHA256SUMS, so adding files to a mirror keeps the lines already there."""
        index = Path(folder) / MIRROR_INDEX
        if not index.is_file():
            return {}
        if index.stat().st_size > MAX_REGISTRY_BYTES:
            raise KitError(f"{index}: larger than {MAX_REGISTRY_BYTES // 1024} KB; not a SHA256SUMS the kit wrote")
        sums = {}
        for line in index.read_text(errors="replace").splitlines():
            digest, _, file = line.partition("  ")
            if len(digest) != 64 or not file or "/" in file:
                raise KitError(f"{index}: not a SHA256SUMS file (line {line[:60]!r}); move it away first")
            sums[file.lstrip("*")] = digest
        return sums
