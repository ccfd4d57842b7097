"""qwenkit: run Qwen3.5-35B-A3B fast on one consumer GPU with llama-cpp-python.

Every notebook step is one call of this package and one `python -m qwenkit` command.
"""
import sys as _sys

__version__ = "0.1.0"
__all__ = ["__version__"]   # the package's API lives in its modules (qwenkit.server, qwenkit.hub, ...)

# Load llama.cpp's shared libraries before numpy. Measured on an H200 (CUDA build of
# llama-cpp-python 0.3.36, numpy 2.5 with scipy-openblas): when numpy is imported first,
# loading any model onto the GPU segfaults; with libllama loaded first it works. The
# ctypes module `llama_cpp.llama_cpp` loads the library without importing numpy.
if "numpy" in _sys.modules and "llama_cpp.llama_cpp" not in _sys.modules:
    import warnings as _warnings

    _warnings.warn("numpy was imported before qwenkit/llama_cpp: on some CUDA machines llama.cpp then "
                   "crashes when it loads a model onto the GPU. Import qwenkit (or llama_cpp) first.",
                   RuntimeWarning, stacklevel=2)
try:
    import llama_cpp.llama_cpp  # noqa: F401
except ImportError:  # not built yet: `make setup`; modules that need it say so
    pass
