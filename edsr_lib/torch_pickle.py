"""Read PyTorch `.pt` state dicts (legacy pre-1.6 and zip formats) without torch and without running their code.

A `.pt` file is a pickle. Unpickling normally imports and calls whatever globals the file names, so a hostile file
can run any code. Here `find_class` resolves only the globals a plain tensor state dict needs (OrderedDict, the
tensor rebuild functions, storage types) to inert stand-ins made afresh for every load; any other global is refused
before anything is called, and tensors are rebuilt into numpy arrays from the raw storage bytes.

A hostile file must not exhaust memory or crash the process either, so before anything is allocated:
- each pickle is pre-scanned (opcode count, object nesting depth, memo size) before `Unpickler.load` runs;
- every tensor's sizes, strides and offset are checked to lie inside its storage, and the elements all tensors
  expand to are bounded by the elements the file stores (stride-0 tensors and one storage under many names count);
- zip members are read only up to the size their storage declares, and at a bounded compression ratio.
Any failure becomes one `KitError` naming the file.
"""

import io
import pickle
import pickletools
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

# Bounds far above any EDSR/MDSR state dict (the paper x4 pickle is ~20 KB with ~1,500 opcodes and depth ~6).
MAX_PICKLE_BYTES = 64 << 20
MAX_OPCODES = 1_000_000
MAX_DEPTH = 100
MAX_MEMO = 200_000
MAX_TENSOR_DIMS = 8
# Tensors may share storage (views), but never expand to more than this many elements beyond what the file stores.
EXPANSION_SLACK = 1 << 20
# torch stores zip members uncompressed; a compressed one may not inflate more than this.
MAX_COMPRESSION_RATIO = 20


class UnsafeCheckpointError(KitError):
    pass


class _Inert:
    """Stand-ins the pickle may create but never modify (a BUILD opcode would otherwise set their attributes)."""

    __slots__ = ()

    def __setstate__(self, state):
        raise UnsafeCheckpointError("the pickle tries to set attributes of a tensor or storage")


class _StorageType(_Inert):
    __slots__ = ("name", "dtype")

    def __init__(self, name):
        self.name, self.dtype = name, np.dtype(STORAGE_DTYPES[name])


class _Storage(_Inert):
    """A storage's dtype and declared length and, once the bytes are known, its flat numpy array."""

    __slots__ = ("dtype", "numel", "array")

    def __init__(self, dtype, numel):
        self.dtype, self.numel, self.array = dtype, numel, None


def _index(value, what):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise KitError(f"bad tensor {what} {value!r:.40}")
    return value


class _LazyTensor(_Inert):
    """A tensor whose storage bytes may come after the pickle (legacy format); its layout is checked on creation."""

    __slots__ = ("storage", "offset", "size", "stride", "numel")

    def __init__(self, storage, offset, size, stride):
        if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)) or len(size) != len(stride):
            raise KitError("bad tensor layout (size and stride must be sequences of equal length)")
        if len(size) > MAX_TENSOR_DIMS:
            raise KitError(f"tensor with {len(size)} dimensions")
        self.storage, self.offset = storage, _index(offset, "storage offset")
        self.size = tuple(_index(s, "size") for s in size)
        self.stride = tuple(_index(s, "stride") for s in stride)
        self.numel = int(np.prod(self.size, dtype=object)) if self.size else 1
        if self.numel:
            last = self.offset + sum((s - 1) * st for s, st in zip(self.size, self.stride))
            if last >= storage.numel:
                raise KitError(f"tensor reaches element {last} of a storage of {storage.numel}")

    def to_numpy(self):
        flat = self.storage.array
        if flat is None or flat.size != self.storage.numel:
            raise KitError("tensor data missing from checkpoint")
        if not self.numel:
            return np.zeros(self.size, flat.dtype)
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :],
            shape=self.size,
            strides=[s * flat.dtype.itemsize for s in self.stride],
            writeable=False,
        )
        return np.array(view)


def _prescan(data, source):
    """Bound a pickle before it is loaded: opcodes, nesting depth of the objects it builds, memo entries.

    The depth of every stack item is simulated from each opcode's documented stack effect (pickletools), so a
    200,000-deep nest of tuples, which overflows CPython's stack inside `load`, is refused here."""
    stack, memo = [], {}
    for count, (op, arg, _) in enumerate(pickletools.genops(data)):
        if count >= MAX_OPCODES:
            raise UnsafeCheckpointError(f"{source}: pickle has more than {MAX_OPCODES} opcodes")
        before = op.stack_before
        popped = []
        if pickletools.stackslice in before:
            while stack and stack[-1] is not None:
                popped.append(stack.pop())
            if stack:
                stack.pop()  # the mark
            before = before[: before.index(pickletools.markobject)]
        for _ in before:
            if stack:
                popped.append(stack.pop() or 0)
        if op.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            memo[len(memo) if op.name == "MEMOIZE" else arg] = stack[-1] if stack else 0
            if len(memo) > MAX_MEMO:
                raise UnsafeCheckpointError(f"{source}: pickle memo over {MAX_MEMO} entries")
            continue
        if op.name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo.get(arg, 0))
            continue
        depth = 1 + max(popped, default=-1)
        if depth > MAX_DEPTH:
            raise UnsafeCheckpointError(f"{source}: pickle nests objects more than {MAX_DEPTH} deep")
        for item in op.stack_after:
            stack.append(None if item is pickletools.markobject else depth)


class _SafeUnpickler(pickle.Unpickler):
    """Loads one pickle that `_prescan` has bounded."""

    def __init__(self, data, storages, source):
        super().__init__(io.BytesIO(data))
        self.storages, self.source = storages, source
        # Fresh per load: nothing a file does can reach the next load.
        self.allowed = {
            ("collections", "OrderedDict"): OrderedDict,
            ("torch._utils", "_rebuild_tensor"): self.rebuild_tensor,
            ("torch._utils", "_rebuild_tensor_v2"): self.rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): self.rebuild_parameter,
            **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
        }

    def find_class(self, module, name):
        try:
            return self.allowed[(module, name)]
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
        if not isinstance(storage_type, _StorageType):
            raise UnsafeCheckpointError(f"{self.source}: malformed storage record")
        numel = _index(numel, "storage length")
        if key not in self.storages:
            self.storages[key] = _Storage(storage_type.dtype, numel)
        elif self.storages[key].numel != numel or self.storages[key].dtype != storage_type.dtype:
            raise KitError(f"{self.source}: storage {key} declared twice with different lengths or types")
        return self.storages[key]

    @staticmethod
    def rebuild_tensor(storage, storage_offset, size, stride, *unused):
        if not isinstance(storage, _Storage):
            raise UnsafeCheckpointError("tensor rebuilt from something that is not a storage")
        return _LazyTensor(storage, storage_offset, size, stride)

    @staticmethod
    def rebuild_parameter(data, requires_grad, backward_hooks, *unused):
        if not isinstance(data, _LazyTensor):
            raise UnsafeCheckpointError("parameter rebuilt from something that is not a tensor")
        return data


def _materialise(obj, storages, source):
    """Turn the unpickled state dict into name -> numpy array; anything else in it is refused."""
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise KitError(f"{source}: expected a state dict (name -> tensor), found {type(obj).__name__}")
    tensors = [(str(name), value) for name, value in obj.items() if isinstance(value, _LazyTensor)]
    if not tensors:
        raise KitError(f"{source}: no tensors found")
    stored = sum(s.numel for s in storages.values())
    expanded = sum(t.numel for _, t in tensors)
    if expanded > stored + EXPANSION_SLACK:
        raise UnsafeCheckpointError(
            f"{source}: its tensors would expand to {expanded} elements from {stored} stored "
            "(stride-0 or repeated tensors)"
        )
    return OrderedDict((name.removeprefix("module.").removeprefix("model."), t.to_numpy()) for name, t in tensors)


def _read_member(archive, info, limit, source):
    if info.file_size > limit:
        raise UnsafeCheckpointError(f"{source}: {info.filename} declares {info.file_size} bytes (at most {limit})")
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_COMPRESSION_RATIO * info.compress_size + 4096:
        raise UnsafeCheckpointError(
            f"{source}: {info.filename} inflates {info.file_size // max(info.compress_size, 1)}-fold (a zip bomb?)"
        )
    with archive.open(info) as member:
        data = member.read(limit + 1)
    if len(data) > limit:
        raise UnsafeCheckpointError(f"{source}: {info.filename} holds more than {limit} bytes")
    return data


def _load_zip(path):
    with zipfile.ZipFile(path) as archive:
        infos = {info.filename: info for info in archive.infolist()}
        pickles = [n for n in infos if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise KitError(f"{path}: zip file is not a PyTorch checkpoint (no single data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        storages = {}
        data = _read_member(archive, infos[pickles[0]], MAX_PICKLE_BYTES, path)
        _prescan(io.BytesIO(data), path)
        obj = _SafeUnpickler(data, storages, path).load()
        byteorder = "little"
        if prefix + "byteorder" in infos:
            byteorder = _read_member(archive, infos[prefix + "byteorder"], 16, path).decode().strip()
        for key, storage in storages.items():
            member = f"{prefix}data/{key}"
            if member not in infos:
                raise KitError(f"{path}: storage {key} missing from archive")
            expected = storage.numel * storage.dtype.itemsize
            raw = _read_member(archive, infos[member], expected, path)
            if len(raw) != expected:
                raise KitError(f"{path}: storage {key} holds {len(raw)} bytes, its tensors need {expected}")
            dtype = storage.dtype.newbyteorder("<" if byteorder == "little" else ">")
            storage.array = np.frombuffer(raw, dtype=dtype).astype(storage.dtype)
    return obj, storages


class _Bounded:
    """A read-only view of a file that refuses to give more than `limit` bytes (what pickletools reads from)."""

    def __init__(self, f, limit, source):
        self.f, self.left, self.source = f, limit, source

    def _take(self, data):
        self.left -= len(data)
        return data

    def read(self, n):
        if n > self.left:
            raise UnsafeCheckpointError(f"{self.source}: pickle larger than {MAX_PICKLE_BYTES} bytes")
        return self._take(self.f.read(n))

    def readline(self):
        line = self.f.readline(self.left + 1)
        if len(line) > self.left:
            raise UnsafeCheckpointError(f"{self.source}: pickle larger than {MAX_PICKLE_BYTES} bytes")
        return self._take(line)

    def tell(self):
        return self.f.tell()


def _next_pickle(f, path):
    """The bytes of the (pre-scanned, bounded) pickle starting at f's position, leaving f just after its STOP."""
    start = f.tell()
    _prescan(_Bounded(f, MAX_PICKLE_BYTES, path), path)
    end = f.tell()
    f.seek(start)
    return f.read(end - start)


def _load_legacy(path, f):
    # The magic number, protocol and system-info records are plain values: the same unpickler refuses globals.
    header = [_SafeUnpickler(_next_pickle(f, path), {}, path).load() for _ in range(3)]
    if header[0] != LEGACY_MAGIC or header[1] != LEGACY_PROTOCOL:
        raise KitError(f"{path}: not a PyTorch checkpoint (bad magic number)")
    little_endian = header[2].get("little_endian", True) if isinstance(header[2], dict) else True
    storages = {}
    obj = _SafeUnpickler(_next_pickle(f, path), storages, path).load()
    keys = _SafeUnpickler(_next_pickle(f, path), {}, path).load()
    if not isinstance(keys, list):
        raise KitError(f"{path}: malformed storage key list")
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            raise KitError(f"{path}: storage {key} is not referenced by any tensor")
        (numel,) = struct.unpack("<q" if little_endian else ">q", f.read(8) or b"\0" * 8)
        if numel != storage.numel:
            raise KitError(f"{path}: storage {key} holds {numel} elements, its record says {storage.numel}")
        dtype = storage.dtype.newbyteorder("<" if little_endian else ">")
        raw = f.read(numel * dtype.itemsize)
        if len(raw) != numel * dtype.itemsize:
            raise KitError(f"{path}: file is truncated")
        storage.array = np.frombuffer(raw, dtype=dtype).astype(storage.dtype)
    return obj, storages


def load_torch_state_dict(path):
    """name -> numpy array from a `.pt` file, either serialisation format; refuses anything but tensors."""
    path = str(path)
    try:
        if zipfile.is_zipfile(path):
            obj, storages = _load_zip(path)
        else:
            with open(path, "rb") as f:
                obj, storages = _load_legacy(path, f)
        return _materialise(obj, storages, path)
    except KitError as exc:
        message = str(exc)
        raise type(exc)(message if message.startswith(path) else f"{path}: {message}") from None
    except FileNotFoundError:
        raise KitError(f"{path}: no such file") from None
    except Exception as exc:  # corrupt deflate, encrypted members, bad metadata, ...: one line, never a traceback
        raise KitError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})"[:400]) from None
