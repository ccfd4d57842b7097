"""Models for the engine / plan tests: the tiny synthetic MoE models and full-size sparse
ones (a 20 GiB file that is a hole: header only on disk, read by no-alloc probes)."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def engine_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny random qwen35moe / qwen3moe (load and generate) written into a private folder."""
    from qwenkit import synthetic
    d = tmp_path_factory.mktemp("engine-models")
    return {arch: synthetic.write_model(d / f"{arch}-tiny.gguf", arch=arch, size="tiny",
                                        weights="random", progress=False)
            for arch in synthetic.ARCHS}


@pytest.fixture(scope="session")
def engine_full_sparse(tmp_path_factory) -> dict[str, Path]:
    """Full-size qwen35moe (Qwen3.5-35B-A3B shape) and qwen3moe (Qwen3-30B-A3B shape),
    Q4_K_M-like, as sparse files: tensor data is a hole, so only no-alloc probes read them."""
    from qwenkit import synthetic
    d = tmp_path_factory.mktemp("engine-full")
    return {arch: synthetic.write_model(d / f"{arch}-full-sparse.gguf", arch=arch, size="full",
                                        weights="sparse", progress=False)
            for arch in synthetic.ARCHS}
