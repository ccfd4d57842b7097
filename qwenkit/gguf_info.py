"""GGUF facts from the header alone: architecture, layer layout, KV and recurrent sizes, tensors.

`read_gguf(path)` (one file) and `read_model_info(path)` (a model, merging `-0000N-of-0000M`
split files) parse the header with a small bounded parser of our own that reads through a
`read(offset, n)` callable, so the same code sizes a local file and a file on the hub
(`qwenkit.hub.read_remote_info` passes HTTP Range reads). It never reads tensor data: a
20 GB model is described from its first few megabytes.

Integrity comes first, before llama.cpp sees the file (llama.cpp itself only says
"Failed to load model from file"): bad magic, unsupported version, a header that ends
early, absurd counts, tensor data that runs past the end of the file (a truncated
download) each raise `GGUFError` naming the file and the expected and actual sizes.
Every length is checked against the file size before anything is read, so a corrupted
count can neither hang the parser nor make it read gigabytes.

The layer layout follows llama.cpp (src/models/qwen35moe.cpp, llama-model.cpp): for
`qwen35moe` the recurrent (Gated-DeltaNet) layers come from
`<arch>.attention.recurrent_layers` when present, else from `<arch>.full_attention_interval`
(layer i holds a KV cache when (i + 1) % interval == 0); MTP ("nextn") layers at the end
hold no KV cache in a normal context. Nothing is inferred from the model's name.
"""
from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qwenkit.errors import GGUFError
from qwenkit.units import format_bytes

__all__ = ["DEFAULT_ALIGNMENT", "GGML_MAX_DIMS", "GGUF_MAGIC", "HYBRID_ARCHS", "INTERVAL_ARCHS", "KEEP_ARRAY",
           "MAX_ARRAY", "MAX_HEADER_BYTES", "MAX_KV", "MAX_STRING", "MAX_TENSORS", "RECURRENT_ARCHS",
           "SUPPORTED_VERSIONS", "ArrayValue", "GGUFFile", "ModelInfo", "TensorInfo", "check_file", "check_split_set",
           "is_expert_tensor", "layer_of", "main_json", "model_info", "parse_gguf", "read_gguf", "read_model_info",
           "split_parts", "split_siblings"]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
GGML_MAX_DIMS = 4

# Bounds that no real GGUF comes near; a header beyond them is corrupted.
MAX_TENSORS = 1_000_000
MAX_KV = 1_000_000
MAX_STRING = 64 << 20            # one string (chat templates are tens of KB)
MAX_ARRAY = 1 << 28              # elements of one array (vocabularies are ~10^5-10^6)
MAX_HEADER_BYTES = 1 << 30       # a header larger than this is not a model header
KEEP_ARRAY = 4096                # arrays up to this length are kept; longer ones only counted

ReadFn = Callable[[int, int], bytes]

_EXPERT_RE = re.compile(r"blk\.\d+\.ffn_(up|down|gate|gate_up)_(ch|)exps")
_LAYER_RE = re.compile(r"^blk\.(\d+)\.")
_SPLIT_RE = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)

# llama-arch.cpp llm_arch_is_recurrent / llm_arch_is_hybrid
RECURRENT_ARCHS = {"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"}
HYBRID_ARCHS = {"jamba", "falcon-h1", "plamo2", "granitehybrid", "lfm2", "lfm2moe", "nemotron_h",
                "nemotron_h_moe", "qwen3next", "kimi-linear", "bailingmoe3", "kimi-k3", "glm5-next",
                "qwen35", "qwen35moe", "qwen4exp", "deepseek4", "minimax-01"}
# hybrids whose layout is `full_attention_interval` (default 4) unless recurrent_layers is given
INTERVAL_ARCHS = {"qwen3next", "qwen35", "qwen35moe"}


# ---------------------------------------------------------------------------- ggml types
def _ggml_tables() -> tuple[dict[int, tuple[int, int]], dict[int, str]]:
    import gguf  # the gguf package knows every ggml type's block size and bytes per block
    sizes = {int(t): (int(b), int(s)) for t, (b, s) in gguf.GGML_QUANT_SIZES.items()}
    names = {int(t): t.name for t in gguf.GGMLQuantizationType}
    return sizes, names


GGML_TYPE_SIZES, GGML_TYPE_NAMES = _ggml_tables()


def _file_type_name(ftype: int | None) -> str | None:
    if ftype is None:
        return None
    import gguf
    try:
        name = gguf.LlamaFileType(int(ftype)).name
    except ValueError:
        return f"file_type {ftype}"
    return name.removeprefix("MOSTLY_")


# ---------------------------------------------------------------------------- helpers
def layer_of(tensor_name: str) -> int | None:
    """Block index of a tensor (`blk.12.ffn_up_exps.weight` -> 12); None for non-layer tensors."""
    m = _LAYER_RE.match(tensor_name)
    return int(m.group(1)) if m else None


def is_expert_tensor(tensor_name: str) -> bool:
    """A routed-expert tensor, the ones llama.cpp's `--n-cpu-moe` keeps in system RAM
    (pattern `blk.N.ffn_(up|down|gate|gate_up)_(ch|)exps`; shared experts `_shexp` are not)."""
    return _EXPERT_RE.search(tensor_name) is not None


def split_parts(filename: str) -> tuple[str, int, int] | None:
    """`X-00002-of-00005.gguf` -> ("X", 2, 5); None when not a split file."""
    m = _SPLIT_RE.match(Path(filename).name)
    if not m:
        return None
    return m.group("stem"), int(m.group("no")), int(m.group("count"))


# ---------------------------------------------------------------------------- data classes
@dataclass(frozen=True)
class ArrayValue:
    """A long metadata array (a vocabulary, merges): its element type and length, not its items."""
    type: str
    count: int

    def __len__(self) -> int:
        return self.count


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: int
    type_name: str
    shape: tuple[int, ...]       # ggml order: ne0 (the row) first
    offset: int                  # absolute byte offset of the data in its file
    nbytes: int
    part: int = 0                # index of the split file holding it (0 for single files)

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def layer(self) -> int | None:
        return layer_of(self.name)

    @property
    def is_expert(self) -> bool:
        return is_expert_tensor(self.name)


@dataclass(frozen=True)
class GGUFFile:
    """One parsed GGUF file (a model, or one part of a split model)."""
    source: str
    file_size: int
    version: int
    alignment: int
    metadata: dict[str, Any]
    tensors: tuple[TensorInfo, ...]
    header_size: int             # bytes of header (magic .. end of tensor infos)
    data_offset: int             # where tensor data starts (header, padded to alignment)
    tensor_data_end: int         # end of the last tensor's data: the file must be at least this long
    bytes_read: int              # bytes the parser fetched through read()


@dataclass(frozen=True)
class ModelInfo:
    """What the memory planner needs, read from the header(s), never from the model name."""
    source: str                  # path or URL of the first file
    arch: str
    name: str | None
    file_type: str | None        # dominant quantization (general.file_type), e.g. "Q4_K_M"
    n_layer: int                 # blocks that run in a normal decode (block_count - nextn)
    n_layer_all: int             # block_count (including MTP/nextn blocks)
    n_layer_nextn: int
    n_embd: int
    n_vocab: int | None
    context_length: int | None
    n_head: tuple[int, ...]      # per layer (n_layer_all entries)
    n_head_kv_layers: tuple[int, ...]
    head_dim_k: int
    head_dim_v: int
    recurrent_layers: tuple[int, ...]
    kv_layers: tuple[int, ...]   # layers that hold a KV cache in a normal context
    layout_source: str           # where the recurrent/attention layout came from
    expert_count: int
    expert_used_count: int
    expert_shared_count: int
    expert_ff: int | None
    ssm_conv_kernel: int
    ssm_inner_size: int
    ssm_state_size: int
    ssm_group_count: int
    ssm_time_step_rank: int
    sliding_window: int | None
    tensors: tuple[TensorInfo, ...]
    parts: tuple[GGUFFile, ...] = field(repr=False)
    metadata: dict[str, Any] = field(repr=False)

    # ---- sizes
    @property
    def file_size(self) -> int:
        return sum(p.file_size for p in self.parts)

    @property
    def tensor_data_end(self) -> int:
        """End of tensor data in the first (or only) file; see `parts` for each split file."""
        return self.parts[0].tensor_data_end

    @property
    def n_parts(self) -> int:
        return len(self.parts)

    @property
    def header_bytes_read(self) -> int:
        return sum(p.bytes_read for p in self.parts)

    @property
    def weights_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def expert_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors if t.is_expert)

    @property
    def non_expert_bytes(self) -> int:
        return self.weights_bytes - self.expert_bytes

    def tensors_in_layer(self, layer: int) -> list[TensorInfo]:
        return [t for t in self.tensors if t.layer == layer]

    def layer_bytes(self, layer: int) -> int:
        return sum(t.nbytes for t in self.tensors if t.layer == layer)

    def layer_expert_bytes(self, layer: int) -> int:
        return sum(t.nbytes for t in self.tensors if t.layer == layer and t.is_expert)

    def bytes_by_type(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tensors:
            out[t.type_name] = out.get(t.type_name, 0) + t.nbytes
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    # ---- attention / recurrent state
    def n_head_kv(self, layer: int) -> int:
        return self.n_head_kv_layers[layer]

    def is_recurrent(self, layer: int) -> bool:
        return layer in self.recurrent_layers

    @property
    def is_moe(self) -> bool:
        return self.expert_count > 0

    def kv_elements_per_token(self) -> tuple[int, int]:
        """(K elements, V elements) one context token adds to the KV cache, over all KV layers."""
        k = sum(self.n_head_kv(il) * self.head_dim_k for il in self.kv_layers)
        v = sum(self.n_head_kv(il) * self.head_dim_v for il in self.kv_layers)
        return k, v

    def kv_bytes_per_token(self, type_k: str = "f16", type_v: str = "f16") -> float:
        """Bytes of KV cache per context token for the given cache types (e.g. 20,480 for
        Qwen3.5-35B-A3B in f16: 10 layers x 2 heads x 256 x (K+V) x 2 bytes)."""
        from qwenkit.config import KV_BYTES_PER_ELEMENT, kv_type_name
        k, v = self.kv_elements_per_token()
        return k * KV_BYTES_PER_ELEMENT[kv_type_name(type_k)] + v * KV_BYTES_PER_ELEMENT[kv_type_name(type_v)]

    @property
    def recurrent_state_elements(self) -> tuple[int, int]:
        """(conv state, ssm state) f32 elements per recurrent layer and sequence
        (llama_hparams::n_embd_r / n_embd_s for Mamba-style and Gated-DeltaNet layers)."""
        if not self.recurrent_layers:
            return 0, 0
        d_inner, d_state, n_group = self.ssm_inner_size, self.ssm_state_size, self.ssm_group_count
        r = max(self.ssm_conv_kernel - 1, 0) * (d_inner + 2 * n_group * d_state)
        s = d_state * d_inner
        return r, s

    @property
    def recurrent_state_bytes(self) -> int:
        """Bytes of recurrent state per sequence over all recurrent layers (f32; constant in
        context length). Qwen3.5-35B-A3B: 30 layers x (24,576 + 524,288) x 4 = 62.81 MiB."""
        r, s = self.recurrent_state_elements
        return len(self.recurrent_layers) * (r + s) * 4

    # ---- presentation
    def summary(self) -> str:
        lines = [
            f"{Path(self.source).name}: {self.arch}, {self.file_type or '?'}, "
            f"{format_bytes(self.file_size)} in {self.n_parts} file(s), {len(self.tensors)} tensors",
            f"  layers {self.n_layer}" + (f" (+{self.n_layer_nextn} MTP)" if self.n_layer_nextn else "")
            + f", embd {self.n_embd}, context {self.context_length}, vocab {self.n_vocab}",
            f"  KV cache in {len(self.kv_layers)} of {self.n_layer} layers ({self.layout_source}): "
            f"{self.n_head_kv(self.kv_layers[0]) if self.kv_layers else 0} KV heads x "
            f"{self.head_dim_k}/{self.head_dim_v} -> {self.kv_bytes_per_token():,.0f} B/token in f16",
        ]
        if self.recurrent_layers:
            lines.append(f"  recurrent layers {len(self.recurrent_layers)}: state "
                         f"{format_bytes(self.recurrent_state_bytes)} per sequence")
        if self.is_moe:
            lines.append(f"  experts {self.expert_count}, {self.expert_used_count} used"
                         + (f" + {self.expert_shared_count} shared" if self.expert_shared_count else "")
                         + f"; expert weights {format_bytes(self.expert_bytes)}, other weights "
                         f"{format_bytes(self.non_expert_bytes)}")
        return "\n".join(lines)

    def to_dict(self, tensors: bool = False) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in (
            "source", "arch", "name", "file_type", "n_layer", "n_layer_all", "n_layer_nextn", "n_embd",
            "n_vocab", "context_length", "head_dim_k", "head_dim_v", "layout_source", "expert_count",
            "expert_used_count", "expert_shared_count", "expert_ff", "ssm_conv_kernel",
            "ssm_inner_size", "ssm_state_size", "ssm_group_count", "ssm_time_step_rank",
            "sliding_window", "file_size", "n_parts", "weights_bytes", "expert_bytes",
            "non_expert_bytes", "recurrent_state_bytes", "header_bytes_read")}
        d["kv_layers"] = list(self.kv_layers)
        d["recurrent_layers"] = list(self.recurrent_layers)
        d["n_head_kv"] = list(self.n_head_kv_layers)
        d["kv_bytes_per_token_f16"] = self.kv_bytes_per_token()
        if tensors:
            d["tensors"] = [asdict(t) for t in self.tensors]
        return d

    def _repr_markdown_(self) -> str:
        return "```\n" + self.summary() + "\n```"


# ---------------------------------------------------------------------------- the parser
class _Cursor:
    """Sequential reads over `read(offset, n)`, buffered in growing chunks, bounded by the file size."""

    def __init__(self, read: ReadFn, file_size: int, source: str, first_chunk: int, max_chunk: int,
                 max_header: int):
        self.read_fn, self.file_size, self.source = read, file_size, source
        self.buf = b""
        self.buf_start = 0
        self.pos = 0
        self.chunk = first_chunk
        self.max_chunk = max_chunk
        self.max_header = max_header
        self.bytes_read = 0

    def need(self, n: int, what: str) -> None:
        end = self.pos + n
        if end > self.file_size:
            raise GGUFError(
                f"{self.source}: the GGUF header ends early: reading {what} needs bytes up to {end:,} "
                f"but the file is {self.file_size:,} bytes (truncated or corrupted)",
                "download the file again (python -m qwenkit download REPO QUANT resumes and verifies it)")
        if end > self.max_header:
            raise GGUFError(
                f"{self.source}: the GGUF header claims more than {self.max_header:,} bytes "
                f"(reading {what} up to byte {end:,}): corrupted header",
                "download the file again; if it repeats, the file itself is broken")
        buf_end = self.buf_start + len(self.buf)
        if end <= buf_end:
            return
        keep = self.buf[self.pos - self.buf_start:] if self.pos < buf_end else b""
        start = self.pos + len(keep)
        want = min(max(end - start, self.chunk), self.file_size - start)
        data = self.read_fn(start, want)
        self.bytes_read += len(data)
        if len(data) < end - start:
            raise GGUFError(
                f"{self.source}: the GGUF header ends early: got {start + len(data):,} of the "
                f"{end:,} bytes needed to read {what} (the file should be {self.file_size:,} bytes)",
                "download the file again (python -m qwenkit download resumes and verifies it)")
        self.buf = keep + data
        self.buf_start = self.pos
        self.chunk = min(self.chunk * 2, self.max_chunk)

    def take(self, n: int, what: str) -> memoryview:
        self.need(n, what)
        i = self.pos - self.buf_start
        self.pos += n
        return memoryview(self.buf)[i:i + n]

    def unpack(self, fmt: str, what: str):
        size = struct.calcsize(fmt)
        self.need(size, what)
        vals = struct.unpack_from(fmt, self.buf, self.pos - self.buf_start)
        self.pos += size
        return vals

    def u32(self, what: str) -> int:
        return self.unpack("<I", what)[0]

    def u64(self, what: str) -> int:
        return self.unpack("<Q", what)[0]

    def string(self, what: str) -> str:
        n = self.u64(f"the length of {what}")
        if n > MAX_STRING:
            raise GGUFError(f"{self.source}: {what} claims a {n:,}-byte string at byte {self.pos - 8:,}: "
                            "corrupted header", "download the file again")
        return bytes(self.take(n, what)).decode("utf-8", errors="replace")

    def skip_strings(self, count: int, what: str) -> None:
        for _ in range(count):
            n = self.u64(f"a string length in {what}")
            if n > MAX_STRING:
                raise GGUFError(f"{self.source}: {what} holds a {n:,}-byte string: corrupted header",
                                "download the file again")
            self.need(n, what)
            self.pos += n


_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_TYPE_NAMES = {0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32", 6: "float32",
               7: "bool", 8: "string", 9: "array", 10: "uint64", 11: "int64", 12: "float64"}


def _read_value(c: _Cursor, vtype: int, key: str):
    if vtype == 8:
        return c.string(f"the value of {key}")
    if vtype == 9:
        etype = c.u32(f"the element type of {key}")
        count = c.u64(f"the length of {key}")
        if etype == 9 or etype not in _TYPE_NAMES:
            raise GGUFError(f"{c.source}: key {key!r} is an array of invalid type {etype}: corrupted header",
                            "download the file again")
        if count > MAX_ARRAY:
            raise GGUFError(f"{c.source}: key {key!r} claims {count:,} elements: corrupted header",
                            "download the file again")
        if etype == 8:
            if count * 8 > c.file_size - c.pos:
                raise GGUFError(
                    f"{c.source}: the GGUF header ends early: {key!r} claims {count:,} strings, at least "
                    f"{count * 8:,} bytes, but only {c.file_size - c.pos:,} bytes of the "
                    f"{c.file_size:,}-byte file follow", "download the file again")
            if count <= KEEP_ARRAY:
                return [c.string(f"an element of {key}") for _ in range(count)]
            c.skip_strings(count, key)
            return ArrayValue("string", count)
        fmt = _SCALAR[etype]
        size = struct.calcsize(fmt)
        c.need(size * count, f"the array {key}")
        if count <= KEEP_ARRAY:
            vals = list(struct.unpack_from(f"<{count}{fmt[1]}", c.buf, c.pos - c.buf_start))
            c.pos += size * count
            return vals
        c.pos += size * count
        return ArrayValue(_TYPE_NAMES[etype], count)
    if vtype not in _SCALAR:
        raise GGUFError(f"{c.source}: key {key!r} has invalid GGUF type {vtype}: corrupted header",
                        "download the file again")
    return c.unpack(_SCALAR[vtype], f"the value of {key}")[0]


def parse_gguf(read: ReadFn, file_size: int, source: str, *, first_chunk: int = 1 << 20,
               max_chunk: int = 16 << 20, max_header: int = MAX_HEADER_BYTES, part: int = 0) -> GGUFFile:
    """Parse a GGUF header through `read(offset, n) -> bytes` for a file of `file_size` bytes.

    Reads only header bytes (first `first_chunk`, then growing chunks up to `max_chunk`);
    raises GGUFError on anything a loader would trip over."""
    if file_size < 4:
        raise GGUFError(f"{source}: the file is {file_size} bytes: empty or truncated, not a GGUF model",
                        "download the file again")
    c = _Cursor(read, file_size, source, first_chunk, max_chunk, max_header)
    magic = bytes(c.take(4, "the magic"))
    if magic != GGUF_MAGIC:
        head = magic
        try:
            head = bytes(c.take(min(60, file_size) - 4, "the start")) if file_size > 4 else b""
            head = magic + head
        except GGUFError:
            pass
        hint = "download the file again"
        if head.startswith(b"version https://git-lfs"):
            what = "a git-LFS pointer file, not the model itself"
            hint = "download the real file (python -m qwenkit download REPO QUANT), not the git-LFS pointer"
        elif head.lstrip().lower().startswith((b"<!doctype", b"<html", b"{")):
            what = "a web page or JSON error message, not a model"
        else:
            what = "not a GGUF file"
        raise GGUFError(f"{source}: bad magic {magic!r} (expected b'GGUF'): {what}", hint)
    version = c.u32("the version")
    if version not in SUPPORTED_VERSIONS:
        if version & 0xFFFF == 0 and version:
            why = "it looks big-endian (version bytes swapped); llama.cpp on this machine reads little-endian"
        elif version == 1:
            why = "GGUF v1 is no longer supported by llama.cpp"
        else:
            why = f"supported versions are {', '.join(map(str, SUPPORTED_VERSIONS))}"
        raise GGUFError(f"{source}: unsupported GGUF version {version}: {why}",
                        "use a GGUF written by a current llama.cpp / gguf (version 3)")
    n_tensors = c.u64("the tensor count")
    n_kv = c.u64("the metadata count")
    if n_tensors > MAX_TENSORS or n_kv > MAX_KV:
        raise GGUFError(f"{source}: the header claims {n_tensors:,} tensors and {n_kv:,} metadata keys: "
                        "corrupted header", "download the file again")
    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        key = c.string(f"metadata key #{i}")
        if key in metadata:
            raise GGUFError(f"{source}: duplicate metadata key {key!r}: corrupted header", "download the file again")
        vtype = c.u32(f"the type of {key}")
        metadata[key] = _read_value(c, vtype, key)

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise GGUFError(f"{source}: general.alignment {alignment!r} is not a power of 2: corrupted header",
                        "download the file again")

    raw = []
    names = set()
    for i in range(n_tensors):
        name = c.string(f"the name of tensor #{i}")
        if name in names:
            raise GGUFError(f"{source}: duplicate tensor {name!r}: corrupted header", "download the file again")
        names.add(name)
        n_dims = c.u32(f"the dimensions of {name}")
        if not 1 <= n_dims <= GGML_MAX_DIMS:
            raise GGUFError(f"{source}: tensor {name!r} has {n_dims} dimensions (1-{GGML_MAX_DIMS} allowed): "
                            "corrupted header", "download the file again")
        shape = c.unpack(f"<{n_dims}Q", f"the shape of {name}")
        gtype = c.u32(f"the type of {name}")
        offset = c.u64(f"the offset of {name}")
        if gtype not in GGML_TYPE_SIZES:
            raise GGUFError(f"{source}: tensor {name!r} has unknown ggml type {gtype}",
                            "a newer llama.cpp/gguf may know it; otherwise the file is corrupted")
        block, type_size = GGML_TYPE_SIZES[gtype]
        n_el = 1
        for d in shape:
            n_el *= d
        if n_el >= 1 << 62 or (shape and shape[0] % block):
            raise GGUFError(f"{source}: tensor {name!r} has an impossible shape {tuple(shape)} for "
                            f"{GGML_TYPE_NAMES.get(gtype)}: corrupted header", "download the file again")
        raw.append((name, gtype, tuple(shape), offset, n_el // block * type_size))
    header_size = c.pos
    data_offset = -(-header_size // alignment) * alignment if n_tensors else header_size

    tensors = []
    expected = 0
    data_end = data_offset
    for name, gtype, shape, offset, nbytes in raw:
        if offset != expected:
            raise GGUFError(f"{source}: tensor {name!r} has data offset {offset:,}, expected {expected:,}: "
                            "corrupted header", "download the file again")
        expected += -(-nbytes // alignment) * alignment
        tensors.append(TensorInfo(name, gtype, GGML_TYPE_NAMES.get(gtype, str(gtype)), shape,
                                  data_offset + offset, nbytes, part))
        data_end = max(data_end, data_offset + offset + nbytes)
    if data_end > file_size:
        last = max(tensors, key=lambda t: t.offset + t.nbytes)
        raise GGUFError(
            f"{source}: truncated: the tensor data ends at byte {data_end:,} (tensor {last.name!r}) "
            f"but the file is {file_size:,} bytes ({format_bytes(data_end - file_size)} missing). "
            "An interrupted or incomplete download?",
            "download it again: python -m qwenkit download REPO QUANT (resumes and verifies SHA-256)")
    return GGUFFile(source, file_size, version, alignment, metadata, tuple(tensors), header_size,
                    data_offset, data_end, c.bytes_read)


def read_gguf(path: str | os.PathLike, **kw) -> GGUFFile:
    """Parse one local GGUF file's header (reads only the header's bytes)."""
    p = Path(path)
    if p.is_dir():
        raise GGUFError(f"{p} is a folder, not a GGUF file", "pass the .gguf file inside it")
    try:
        fd = os.open(p, os.O_RDONLY)
    except FileNotFoundError:
        raise GGUFError(f"{p}: no such file",
                        "check the path, or list local models: python -m qwenkit models") from None
    except IsADirectoryError:
        raise GGUFError(f"{p} is a folder, not a GGUF file", "pass the .gguf file inside it") from None
    except OSError as e:
        raise GGUFError(f"{p}: cannot open: {e.strerror}", "check the path and its permissions") from None
    def read(off: int, n: int) -> bytes:
        try:
            return os.pread(fd, n, off)
        except OSError as e:
            raise GGUFError(f"{p}: read error at byte {off:,}: {e.strerror}",
                            "check the disk; download the file again") from None

    try:
        size = os.fstat(fd).st_size
        return parse_gguf(read, size, str(p), **kw)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- ModelInfo
def _per_layer(value, n: int, default: int) -> tuple[int, ...]:
    if value is None:
        return (default,) * n
    if isinstance(value, list):
        vals = [int(v) for v in value][:n]
        return tuple(vals + [vals[-1] if vals else default] * (n - len(vals)))
    if isinstance(value, ArrayValue):  # absurdly long per-layer array
        return (default,) * n
    return (int(value),) * n


def model_info(parts: Sequence[GGUFFile]) -> ModelInfo:
    """ModelInfo from the parsed file(s) of one model (split parts in order)."""
    if not parts:
        raise GGUFError("no GGUF files given", "pass the first file of the model")
    first = parts[0]
    md = dict(first.metadata)
    src = first.source
    arch = md.get("general.architecture")
    if not isinstance(arch, str):
        raise GGUFError(f"{src}: no general.architecture in the header"
                        + (" (this is not the first part of a split model)" if md.get("split.no") else ""),
                        "pass the first file of the model (…-00001-of-0000N.gguf)")

    def g(key: str, default=None):
        return md.get(f"{arch}.{key}", default)

    n_layer_all = int(g("block_count", 0) or 0)
    if not 0 < n_layer_all <= 10_000:
        raise GGUFError(f"{src}: {arch}.block_count is {g('block_count')!r}", "the header is incomplete or corrupted")
    n_nextn = int(g("nextn_predict_layers", 0) or 0)
    if n_nextn > n_layer_all:
        raise GGUFError(f"{src}: {arch}.nextn_predict_layers {n_nextn} > block_count {n_layer_all}",
                        "the header is corrupted")
    n_layer = n_layer_all - n_nextn
    n_embd = int(g("embedding_length", 0) or 0)
    n_head = _per_layer(g("attention.head_count"), n_layer_all, 0)
    n_head_kv = _per_layer(g("attention.head_count_kv"), n_layer_all, max(n_head) if n_head else 0)
    head0 = max(n_head) if n_head else 0
    head_k = int(g("attention.key_length", 0) or (n_embd // head0 if head0 else 0))
    head_v = int(g("attention.value_length", 0) or head_k)

    # recurrent / attention layout, the way llama.cpp decides it
    rl = g("attention.recurrent_layers")
    if isinstance(rl, list) and rl:
        recurrent = [bool(v) for v in rl][:n_layer_all]
        recurrent += [False] * (n_layer_all - len(recurrent))
        layout = f"{arch}.attention.recurrent_layers"
    elif arch in INTERVAL_ARCHS:
        interval = int(g("full_attention_interval", 4) or 4)
        recurrent = [i < n_layer and (i + 1) % interval != 0 for i in range(n_layer_all)]
        layout = (f"{arch}.full_attention_interval = {interval}" if g("full_attention_interval") is not None
                  else f"full_attention_interval not in header: llama.cpp's default {interval}")
    elif arch in RECURRENT_ARCHS:
        recurrent = [True] * n_layer_all
        layout = "recurrent architecture: no KV cache"
    elif arch in HYBRID_ARCHS:
        recurrent = [n_head_kv[i] == 0 for i in range(n_layer_all)]
        layout = f"{arch}: layers with head_count_kv 0 are recurrent"
    else:
        recurrent = [False] * n_layer_all
        layout = "every layer holds a KV cache"
    recurrent_layers = tuple(i for i in range(n_layer_all) if recurrent[i])
    kv_layers = tuple(i for i in range(n_layer) if not recurrent[i] and n_head_kv[i] > 0)

    tokens = md.get("tokenizer.ggml.tokens")
    n_vocab = g("vocab_size") or (len(tokens) if tokens is not None else None)
    tensors = tuple(t for p in parts for t in p.tensors)
    return ModelInfo(
        source=src, arch=arch, name=md.get("general.name"),
        file_type=_file_type_name(md.get("general.file_type")),
        n_layer=n_layer, n_layer_all=n_layer_all, n_layer_nextn=n_nextn, n_embd=n_embd,
        n_vocab=int(n_vocab) if n_vocab is not None else None,
        context_length=int(g("context_length")) if g("context_length") is not None else None,
        n_head=n_head, n_head_kv_layers=n_head_kv, head_dim_k=head_k, head_dim_v=head_v,
        recurrent_layers=recurrent_layers, kv_layers=kv_layers, layout_source=layout,
        expert_count=int(g("expert_count", 0) or 0), expert_used_count=int(g("expert_used_count", 0) or 0),
        expert_shared_count=int(g("expert_shared_count", 0) or 0),
        expert_ff=int(g("expert_feed_forward_length")) if isinstance(g("expert_feed_forward_length"), int) else None,
        ssm_conv_kernel=int(g("ssm.conv_kernel", 0) or 0), ssm_inner_size=int(g("ssm.inner_size", 0) or 0),
        ssm_state_size=int(g("ssm.state_size", 0) or 0), ssm_group_count=int(g("ssm.group_count", 0) or 0),
        ssm_time_step_rank=int(g("ssm.time_step_rank", 0) or 0),
        sliding_window=int(g("attention.sliding_window")) if isinstance(g("attention.sliding_window"), int) else None,
        tensors=tensors, parts=tuple(parts), metadata=md,
    )


def check_split_set(parts: Sequence[GGUFFile]) -> None:
    """The parts of a split model are all there, in order, and agree with each other."""
    first = parts[0]
    count = first.metadata.get("split.count")
    if count is None:
        return
    if len(parts) != count:
        raise GGUFError(f"{first.source}: split model of {count} files, {len(parts)} found",
                        "download every part (python -m qwenkit download REPO QUANT fetches them all)")
    for i, p in enumerate(parts):
        if p.metadata.get("split.no", i) != i:
            raise GGUFError(f"{p.source}: is split part {p.metadata.get('split.no')}, expected part {i}",
                            "keep the original file names")
    n = first.metadata.get("split.tensors.count")
    got = sum(len(p.tensors) for p in parts)
    if isinstance(n, int) and n != got:
        raise GGUFError(f"{first.source}: split model declares {n} tensors, its parts hold {got}",
                        "a part is from another model or version: download the quant again")


def split_siblings(path: Path) -> list[Path]:
    """All parts of a split model given any part (same folder, original names)."""
    sp = split_parts(path.name)
    if not sp:
        return [path]
    stem, _, count = sp
    return [path.with_name(f"{stem}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


def read_model_info(path: str | os.PathLike, **kw) -> ModelInfo:
    """ModelInfo of a local model: one GGUF, or every part of a split one given any part."""
    p = Path(path)
    files = split_siblings(p)
    missing = [f for f in files if not f.exists()]
    if missing:
        raise GGUFError(f"{p}: split model of {len(files)} files, missing: {', '.join(m.name for m in missing)}",
                        "download every part: python -m qwenkit download REPO QUANT")
    parts = [read_gguf(f, part=i, **kw) for i, f in enumerate(files)]
    check_split_set(parts)
    return model_info(parts)


def check_file(path: str | os.PathLike) -> ModelInfo:
    """Integrity check before llama.cpp sees the file(s); returns the ModelInfo, or raises GGUFError."""
    return read_model_info(path)


def main_json(path: str) -> str:  # pragma: no cover - debugging helper
    return json.dumps(read_model_info(path).to_dict(), indent=1)
