"""llama.cpp's log: captured from real loads, parsed, and turned into load errors with reasons."""
from __future__ import annotations

import ctypes

import pytest

from qwenkit.errors import ModelLoadError
from qwenkit.llamalog import LlamaLog, capture_log, fix_for, load_llama

llama_cpp = pytest.importorskip("llama_cpp")


def _current_callback() -> int | None:
    cb = llama_cpp.llama_log_callback()
    ud = ctypes.c_void_p()
    llama_cpp.llama_log_get(ctypes.byref(cb), ctypes.byref(ud))
    return ctypes.cast(cb, ctypes.c_void_p).value


@pytest.fixture(scope="module")
def smol_log(default_model):
    before = _current_callback()
    with capture_log() as log:
        llm = llama_cpp.Llama(model_path=str(default_model), n_ctx=512, type_k=8, type_v=8,
                              flash_attn=True, n_threads=2, verbose=False)
    after = _current_callback()
    llm.close()
    return log, before, after


def test_capture_restores_previous_callback(smol_log):
    log, before, after = smol_log
    assert before and before == after  # llama-cpp-python's own callback is back


def test_capture_parses_real_load(smol_log):
    log, _, _ = smol_log
    assert len(log) > 100 and "llama_context" in log.text
    (kv,) = log.kv_cache()
    assert (kv.cells, kv.layers, kv.type_k, kv.type_v) == (512, 30, "q8_0", "q8_0")
    assert kv.size_mib == pytest.approx(kv.k_mib + kv.v_mib, abs=0.02)
    # SmolLM2: 30 layers x 3 KV heads x 64 x 512 cells x 34/32 B, K and V
    assert kv.bytes == pytest.approx(2 * 30 * 192 * 512 * 34 / 32, rel=1e-3)
    comp = log.compute_buffers()
    assert set(comp) == {"CPU"} and comp["CPU"] > 90  # logits: 49152 x 512 x 4 B = 96 MiB
    assert sum(log.model_buffers().values()) > 80
    assert log.recurrent() == [] and log.errors == []
    assert log.failure_reason() is None


def test_lines_after_capture_are_not_kept(default_model):
    with capture_log(echo=False) as log:
        pass
    llm = llama_cpp.Llama(model_path=str(default_model), n_ctx=256, n_threads=2, verbose=False)
    llm.close()
    assert len(log) == 0


def test_truncated_file_error_carries_reason(default_model, tmp_path):
    bad = tmp_path / "truncated.gguf"
    with open(default_model, "rb") as f:
        bad.write_bytes(f.read(40_000_000))
    with pytest.raises(ModelLoadError) as ei:
        load_llama(model_path=str(bad), n_ctx=256, verbose=False)
    e = ei.value
    assert "not within the file bounds" in str(e) and e.fix and "download it again" in e.fix
    assert "Failed to load model from file" not in e.problem


def test_bad_magic_and_missing_file(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"XXXX" + b"\0" * 64)
    with pytest.raises(ModelLoadError, match="invalid magic"):
        load_llama(model_path=str(bad), verbose=False)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_llama(model_path=str(tmp_path / "none.gguf"), verbose=False)


def test_context_error_carries_reason(default_model):
    with pytest.raises(ModelLoadError) as ei:
        load_llama(model_path=str(default_model), n_ctx=256, type_v=8, flash_attn=False, verbose=False)
    assert "quantized V cache requires flash_attn" in str(ei.value)
    assert ei.value.fix and "flash_attn=True" in ei.value.fix


def test_load_llama_keeps_its_log(default_model):
    llm = load_llama(model_path=str(default_model), n_ctx=256, n_threads=2, verbose=False)
    try:
        assert llm.load_log.kv_cache()[0].cells == 256
    finally:
        llm.close()


CUDA_LOG = """\
load_tensors: offloading output layer to GPU
load_tensors: offloading 39 repeating layers to GPU
load_tensors: offloaded 41/41 layers to GPU
tensor blk.0.ffn_gate_exps.weight (96 MiB q4_K) buffer type overridden to CUDA_Host
tensor blk.0.ffn_down_exps.weight (144 MiB q6_K) buffer type overridden to CUDA_Host
load_tensors:        CUDA0 model buffer size = 11250.50 MiB
load_tensors:   CPU_Mapped model buffer size =  8123.25 MiB
llama_context:  CUDA_Host  output buffer size =     0.95 MiB
llama_kv_cache:      CUDA0 KV buffer size =   160.00 MiB
llama_kv_cache: size =  160.00 MiB (  8192 cells,  10 layers,  1/1 seqs), K (f16):   80.00 MiB, V (f16):   80.00 MiB
llama_memory_recurrent:      CUDA0 RS buffer size =    62.81 MiB
llama_memory_recurrent: size =   62.81 MiB (     1 cells,  40 layers,  1 seqs  1 rs_seq), R (f32):    2.81 MiB, \
S (f32):   60.00 MiB, P (f32):    0.00 MiB
sched_reserve:      CUDA0 compute buffer size =   493.00 MiB
sched_reserve:  CUDA_Host compute buffer size =    20.01 MiB
ggml_backend_cuda_buffer_type_alloc_buffer: allocating 1024.00 MiB on device 0: cudaMalloc failed: out of memory
llama_init_from_model: failed to initialize the context: failed to allocate compute pp buffers
"""


def test_parsers_on_a_cuda_log():
    log = LlamaLog.from_text(CUDA_LOG)
    assert log.offloaded() == (41, 41)
    assert log.overrides() == {"blk.0.ffn_gate_exps.weight": "CUDA_Host",
                               "blk.0.ffn_down_exps.weight": "CUDA_Host"}
    assert log.model_buffers() == {"CUDA0": 11250.50, "CPU_Mapped": 8123.25}
    assert log.compute_buffers() == {"CUDA0": 493.0, "CUDA_Host": 20.01}
    assert log.kv_buffers() == {"CUDA0": 160.0} and log.rs_buffers() == {"CUDA0": 62.81}
    (rs,) = log.recurrent()
    assert (rs.layers, rs.r_mib, rs.s_mib) == (40, 2.81, 60.0)
    assert "cudaMalloc failed: out of memory" in (log.failure_reason() or "")
    assert "n_cpu_moe" in (log.fix_hint() or "")


def test_fix_hints():
    assert "n_ctx" in (fix_for("failed to allocate CUDA0 buffer of size 123") or "")
    assert "download" in (fix_for("tensor 'x' data is not within the file bounds") or "")
    assert fix_for("something new") is None
