"""Read PyTorch `.pt` state dicts (legacy pre-1.6 and zip formats) without torch and without running their code.

A `.pt` file is a pickle. Unpickling normally imports and calls whatever globals the file names, so a hostile file
can run any code. Here `find_class` resolves only the globals a plain tensor state dict needs (OrderedDict, the
tensor rebuild functions, storage types) to inert stand-ins of our own; any other global is refused before anything
is called, and tensors are rebuilt into numpy arrays from the raw storage bytes.
"""
import io
import pickle
import struct
import zipfile
from collections import OrderedDict

import numpy as np

from .errors import KitError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafeCheckpointError(KitError):
    pass


class _StorageType:
    def __init__(self, name):
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name])


class _Storage:
    """A storage's dtype and, once the bytes are known, its flat numpy array."""

    def __init__(self, dtype, numel):
        self.dtype, self.numel, self.array = dtype, numel, None


class _LazyTensor:
    """A tensor whose storage bytes may come after the pickle (legacy format)."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def to_numpy(self):
        flat = self.storage.array
        if flat is None:
            raise KitError("tensor data missing from checkpoint")
        itemsize = flat.dtype.itemsize
        needed = self.offset + sum((s - 1) * st for s, st in zip(self.size, self.stride)) + 1 if self.size else 1
        if min(self.size, default=1) > 0 and needed > flat.size:
            raise KitError("tensor data truncated in checkpoint")
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :], shape=self.size, strides=[s * itemsize for s in self.stride], writeable=False
        )
        return np.array(view)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    if not isinstance(storage, _Storage):
        raise UnsafeCheckpointError("tensor rebuilt from something that is not a storage")
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks, *unused):
    if not isinstance(data, _LazyTensor):
        raise UnsafeCheckpointError("parameter rebuilt from something that is not a tensor")
    return data


ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, file, storages, source):
        super().__init__(file)
        self.storages, self.source = storages, source

    def find_class(self, module, name):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"{self.source}: refused to load: the pickle asks for {module}.{name}, which is not a tensor "
                "or storage (the file may try to run code)"
            ) from None

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise UnsafeCheckpointError(f"{self.source}: unexpected persistent id {pid!r:.80}")
        storage_type, key, numel = pid[1], str(pid[2]), pid[4]
        if len(pid) > 5 and pid[5] is not None:
            raise KitError(f"{self.source}: storage views (saved by torch < 0.4) are not supported")
        if not isinstance(storage_type, _StorageType) or not isinstance(numel, int):
            raise UnsafeCheckpointError(f"{self.source}: malformed storage record")
        if key not in self.storages:
            self.storages[key] = _Storage(storage_type.dtype, numel)
        return self.storages[key]


def _materialise(obj, source):
    """Turn the unpickled state dict into name -> numpy array; anything else in it is refused."""
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise KitError(f"{source}: expected a state dict (name -> tensor), found {type(obj).__name__}")
    out = OrderedDict()
    for name, value in obj.items():
        if isinstance(value, _LazyTensor):
            out[str(name).removeprefix("module.").removeprefix("model.")] = value.to_numpy()
    if not out:
        raise KitError(f"{source}: no tensors found")
    return out


def _load_zip(path):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise KitError(f"{path}: zip file is not a PyTorch checkpoint (no single data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        storages = {}
        obj = _SafeUnpickler(io.BytesIO(archive.read(pickles[0])), storages, path).load()
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = archive.read(prefix + "byteorder").decode().strip()
        for key, storage in storages.items():
            member = f"{prefix}data/{key}"
            if member not in names:
                raise KitError(f"{path}: storage {key} missing from archive")
            dtype = storage.dtype.newbyteorder("<" if byteorder == "little" else ">")
            raw = archive.read(member)
            storage.array = np.frombuffer(raw, dtype=dtype, count=len(raw) // dtype.itemsize).astype(storage.dtype)
    return obj


def _load_legacy(path, f):
    # The magic number, protocol and system-info records are plain values: the same unpickler refuses globals.
    header = [_SafeUnpickler(f, {}, path).load() for _ in range(3)]
    if header[0] != LEGACY_MAGIC or header[1] != LEGACY_PROTOCOL:
        raise KitError(f"{path}: not a PyTorch checkpoint (bad magic number)")
    little_endian = header[2].get("little_endian", True) if isinstance(header[2], dict) else True
    storages = {}
    obj = _SafeUnpickler(f, storages, path).load()
    keys = _SafeUnpickler(f, {}, path).load()
    if not isinstance(keys, list):
        raise KitError(f"{path}: malformed storage key list")
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            raise KitError(f"{path}: storage {key} is not referenced by any tensor")
        (numel,) = struct.unpack("<q" if little_endian else ">q", f.read(8) or b"\0" * 8)
        dtype = storage.dtype.newbyteorder("<" if little_endian else ">")
        raw = f.read(numel * dtype.itemsize)
        if len(raw) != numel * dtype.itemsize:
            raise KitError(f"{path}: file is truncated")
        storage.array = np.frombuffer(raw, dtype=dtype).astype(storage.dtype)
    return obj


def load_torch_state_dict(path):
    """name -> numpy array from a `.pt` file, either serialisation format; refuses anything but tensors."""
    path = str(path)
    try:
        if zipfile.is_zipfile(path):
            obj = _load_zip(path)
        else:
            with open(path, "rb") as f:
                obj = _load_legacy(path, f)
    except KitError:
        raise
    except FileNotFoundError:
        raise KitError(f"{path}: no such file") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, struct.error, zipfile.BadZipFile) as exc:
        raise KitError(f"{path}: not a readable PyTorch checkpoint ({exc})") from None
    return _materialise(obj, path)
