"""gguf_info: ModelInfo from headers (real and synthetic GGUFs) and integrity errors for broken files."""
from __future__ import annotations

import contextlib
import random
import struct
import time
from pathlib import Path

import pytest

from qwenkit.errors import GGUFError
from qwenkit.gguf_info import (
    is_expert_tensor,
    layer_of,
    parse_gguf,
    read_gguf,
    read_model_info,
    split_parts,
)
from qwenkit.units import GiB, MiB

from fixtures_hub import hub_write_gguf


@contextlib.contextmanager
def _counting_reader(path: Path):
    """(read, counts): a parse_gguf reader of `path` that counts its calls and bytes."""
    data = {"bytes": 0, "calls": 0, "max": 0}
    with open(path, "rb") as fh:
        def read(off, n):
            data["calls"] += 1
            data["max"] = max(data["max"], n)
            fh.seek(off)
            b = fh.read(n)
            data["bytes"] += len(b)
            return b
        yield read, data


# ------------------------------------------------------------------------------ facts
def test_default_model_matches_gguf_package(default_model):
    import gguf
    info = read_model_info(default_model)
    ref = gguf.GGUFReader(default_model)
    mine = {t.name: (t.offset, t.nbytes, t.shape, t.ggml_type) for t in info.tensors}
    theirs = {t.name: (int(t.data_offset), int(t.n_bytes), tuple(int(x) for x in t.shape), int(t.tensor_type))
              for t in ref.tensors}
    assert mine == theirs
    assert info.arch == "llama" and info.file_type == "Q4_1"
    assert info.n_layer == 30 and info.kv_layers == tuple(range(30)) and not info.recurrent_layers
    assert info.n_head_kv(0) == 3 and info.head_dim_k == info.head_dim_v == 64
    assert info.kv_bytes_per_token("f16", "f16") == 30 * 3 * 64 * 2 * 2
    assert info.file_size == default_model.stat().st_size == info.tensor_data_end
    assert info.context_length == 8192 and info.n_vocab == 49152 and not info.is_moe
    assert info.header_bytes_read < 4 * MiB < info.file_size


def test_full_size_qwen35moe_header(hub_files):
    """The full-size synthetic Qwen3.5-35B-A3B: every number docs/facts.md lists, from ~5 MB of header."""
    path = hub_files["full"]
    with _counting_reader(path) as (read, seen):
        part = parse_gguf(read, path.stat().st_size, str(path))
    from qwenkit.gguf_info import model_info
    info = model_info([part])
    assert info.arch == "qwen35moe" and info.file_type == "Q4_K_M"
    assert info.n_layer == 40 and info.n_embd == 2048 and info.n_vocab == 248_320
    assert info.context_length == 262_144
    assert info.kv_layers == tuple(range(3, 40, 4))
    assert len(info.recurrent_layers) == 30 and 3 not in info.recurrent_layers
    assert "full_attention_interval = 4" in info.layout_source
    assert info.n_head_kv(3) == 2 and info.head_dim_k == info.head_dim_v == 256
    assert info.kv_bytes_per_token("f16", "f16") == 20_480
    assert info.kv_bytes_per_token("q8_0", "q8_0") == 10_880
    assert info.kv_bytes_per_token("q4_0", "q4_0") == 5_760
    assert round(info.recurrent_state_bytes / MiB, 2) == 62.81
    assert (info.expert_count, info.expert_used_count) == (256, 8)
    assert 19.6 < info.file_size / GiB < 19.8
    assert info.expert_bytes > 0.9 * info.weights_bytes
    assert info.layer_expert_bytes(0) == sum(t.nbytes for t in info.tensors_in_layer(0) if t.is_expert)
    assert {t.name for t in info.tensors_in_layer(39) if t.is_expert} >= {
        "blk.39.ffn_down_exps.weight"}
    # only header bytes were read: under 1% of the file, in a few large reads
    assert seen["bytes"] < 16 * MiB and seen["bytes"] < info.file_size / 100
    assert seen["bytes"] >= info.parts[0].header_size and seen["calls"] <= 6


def test_layout_is_read_from_the_header_not_the_name(tmp_path):
    # interval 2 under a name that says 35B-A3B: layers 1, 3, 5, 7 hold the KV cache
    p = tmp_path / "Qwen3.5-35B-A3B-Q4_K_M.gguf"
    import gguf
    hub_write_gguf(p)  # interval 4
    assert read_model_info(p).kv_layers == (3, 7)
    p2 = tmp_path / "Qwen3.5-35B-A3B-Q4_K_M-interval2.gguf"
    w = gguf.GGUFWriter(str(p2), "qwen35moe")
    w.add_block_count(8)
    w.add_embedding_length(64)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_full_attention_interval(2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    info = read_model_info(p2)
    assert info.kv_layers == (1, 3, 5, 7) and info.head_dim_k == 16  # n_embd / n_head
    # an explicit recurrent_layers array wins; MTP (nextn) blocks hold no KV cache
    p3 = tmp_path / "explicit.gguf"
    hub_write_gguf(p3, n_layer=5, nextn=1, recurrent_layers=[True, False, True, False, False])
    info = read_model_info(p3)
    assert info.recurrent_layers == (0, 2) and info.kv_layers == (1, 3)
    assert info.n_layer == 4 and info.n_layer_all == 5 and info.n_layer_nextn == 1
    assert "recurrent_layers" in info.layout_source


def test_tensor_name_helpers():
    assert layer_of("blk.12.ffn_up_exps.weight") == 12 and layer_of("token_embd.weight") is None
    for n in ("blk.0.ffn_up_exps.weight", "blk.3.ffn_down_exps.weight", "blk.7.ffn_gate_exps.weight",
              "blk.9.ffn_gate_up_exps.weight", "blk.2.ffn_up_chexps.weight", "blk.1.ffn_down_exps.scale"):
        assert is_expert_tensor(n), n
    for n in ("blk.0.ffn_up_shexp.weight", "blk.0.ffn_gate_inp.weight", "blk.0.attn_q.weight",
              "output.weight", "blk.0.ffn_up.weight"):
        assert not is_expert_tensor(n), n
    assert split_parts("a/X-Q8_0-00002-of-00005.gguf") == ("X-Q8_0", 2, 5)
    assert split_parts("X-Q8_0.gguf") is None


def test_split_model_merges_its_parts(hub_files, tmp_path):
    parts = hub_files["split"]
    assert len(parts) == 3
    info = read_model_info(parts[1])  # any part finds its siblings
    assert info.n_parts == 3 and info.source == str(parts[0])
    assert len(info.tensors) == 1 + 9 * 4 + 1 and {t.part for t in info.tensors} == {0, 1, 2}
    assert info.file_size == sum(p.stat().st_size for p in parts)
    assert info.kv_layers == (3, 7) and info.n_layer_nextn == 1
    # a missing part is named
    import shutil
    d = tmp_path / "two"
    d.mkdir()
    shutil.copy(parts[0], d / parts[0].name)
    shutil.copy(parts[2], d / parts[2].name)
    with pytest.raises(GGUFError, match=r"missing: .*00002-of-00003"):
        read_model_info(d / parts[0].name)


# ------------------------------------------------------------------------------ integrity
def _write(tmp_path, name, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.fixture(scope="module")
def tiny_bytes(hub_files) -> bytes:
    return Path(hub_files["tiny"]).read_bytes()


def test_truncated_download_names_expected_and_actual_size(tiny_bytes, tmp_path):
    cut = len(tiny_bytes) - 1_000_000
    p = _write(tmp_path, "cut.gguf", tiny_bytes[:cut])
    with pytest.raises(GGUFError) as e:
        read_gguf(p)
    msg = str(e.value)
    assert str(p) in msg and "truncated" in msg and f"{cut:,}" in msg
    assert "tensor data ends at byte" in msg and "download" in (e.value.fix or "")


def test_truncated_default_model(default_model, tmp_path):
    data = default_model.read_bytes()
    p = _write(tmp_path, "smol-cut.gguf", data[: len(data) // 2])
    t = time.monotonic()
    with pytest.raises(GGUFError, match=f"the file is {len(data) // 2:,} bytes"):
        read_gguf(p)
    assert time.monotonic() - t < 2


@pytest.mark.parametrize("cut", [0, 3, 10, 23, 200, 0.5, 0.99, -1])
def test_header_ending_early(tiny_bytes, hub_files, tmp_path, cut):
    header = read_gguf(hub_files["tiny"]).header_size  # a cut inside the header, at any point
    if isinstance(cut, float) or cut < 0:
        cut = int(header * cut) if cut > 0 else header - 1
    p = _write(tmp_path, f"h{cut}.gguf", tiny_bytes[:cut])
    with pytest.raises(GGUFError) as e:
        read_gguf(p)
    assert str(p) in str(e.value)
    assert ("ends early" in str(e.value) or "empty or truncated" in str(e.value))


@pytest.mark.parametrize("head,what", [
    (b"GGML" + bytes(100), "not a GGUF file"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", "git-LFS pointer"),
    (b"<!DOCTYPE html><html>rate limited</html>" + bytes(40), "web page"),
])
def test_bad_magic(tmp_path, head, what):
    p = _write(tmp_path, "bad.gguf", head)
    with pytest.raises(GGUFError, match="bad magic") as e:
        read_gguf(p)
    assert what in str(e.value) and str(p) in str(e.value)


@pytest.mark.parametrize("version,what", [(1, "v1 is no longer supported"), (4, "supported versions are 2, 3"),
                                          (0x03000000, "big-endian"), (0, "supported versions")])
def test_unsupported_version(tiny_bytes, tmp_path, version, what):
    p = _write(tmp_path, "v.gguf", tiny_bytes[:4] + struct.pack("<I", version) + tiny_bytes[8:])
    with pytest.raises(GGUFError, match="unsupported GGUF version") as e:
        read_gguf(p)
    assert what in str(e.value)


def _header(n_tensors: int, kvs: bytes, n_kv: int, tail: bytes = b"") -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + kvs + tail


def _s(text: str) -> bytes:
    return struct.pack("<Q", len(text)) + text.encode()


@pytest.mark.parametrize("case", ["kv_count", "tensor_count", "string_len", "array_len", "string_array",
                                  "nested_array", "bad_type"])
def test_absurd_counts_fail_fast_without_big_reads(tmp_path, case):
    filler = bytes(4 * MiB)  # the file is big enough that a naive parser would try to read on
    if case == "kv_count":
        data = _header(0, b"", 1 << 40)
    elif case == "tensor_count":
        data = _header(1 << 50, b"", 0)
    elif case == "string_len":
        data = _header(0, struct.pack("<Q", 1 << 60) + b"key", 1)
    elif case == "array_len":
        data = _header(0, _s("a") + struct.pack("<IIQ", 9, 4, 1 << 27), 1)
    elif case == "string_array":
        data = _header(0, _s("a") + struct.pack("<IIQ", 9, 8, 1 << 26), 1)
    elif case == "nested_array":
        data = _header(0, _s("a") + struct.pack("<IIQ", 9, 9, 3), 1)
    else:
        data = _header(0, _s("a") + struct.pack("<I", 77), 1)
    p = _write(tmp_path, f"{case}.gguf", data + filler)
    t = time.monotonic()
    with _counting_reader(p) as (read, seen), pytest.raises(GGUFError) as e:
        parse_gguf(read, p.stat().st_size, str(p))
    assert time.monotonic() - t < 1
    assert seen["bytes"] <= 2 * MiB, seen
    assert str(p) in str(e.value)


def test_bad_tensor_infos(tmp_path):
    def one_tensor(n_dims=2, dims=(32, 4), gtype=0, offset=0):
        t = (_s("w") + struct.pack("<I", n_dims) + struct.pack(f"<{len(dims)}Q", *dims)
             + struct.pack("<IQ", gtype, offset))
        return _header(1, b"", 0, t) + bytes(1024)
    cases = {
        "dims": (one_tensor(n_dims=7, dims=(1,) * 7), "dimensions"),
        "type": (one_tensor(gtype=999), "unknown ggml type"),
        "offset": (one_tensor(offset=64), "expected 0"),
        "shape": (one_tensor(gtype=8, dims=(33, 1)), "impossible shape"),  # q8_0 rows are blocks of 32
        "past_end": (one_tensor(dims=(4096, 4)), "truncated"),
    }
    for name, (data, what) in cases.items():
        p = _write(tmp_path, f"{name}.gguf", data)
        with pytest.raises(GGUFError, match=what):
            read_gguf(p)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(GGUFError, match="no such file"):
        read_gguf(tmp_path / "nope.gguf")
    with pytest.raises(GGUFError, match="is a folder"):
        read_gguf(tmp_path)


def test_random_header_corruption_never_crashes(tiny_bytes):
    """Flip bytes in the header: the parser returns or raises GGUFError, nothing else, quickly."""
    from qwenkit.gguf_info import parse_gguf
    rng = random.Random(3)
    head = bytearray(tiny_bytes[:200_000])
    size = len(tiny_bytes)
    t = time.monotonic()
    outcomes = {"ok": 0, "error": 0}
    for _ in range(300):
        b = bytearray(head)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(8, 60_000)
            b[i] = rng.randrange(256)
        data = bytes(b)
        try:
            def read(off: int, n: int, data: bytes = data) -> bytes:
                return data[off:off + n]
            parse_gguf(read, size, "fuzz.gguf")
            outcomes["ok"] += 1
        except GGUFError:
            outcomes["error"] += 1
    assert time.monotonic() - t < 20
    assert outcomes["error"] > 0
