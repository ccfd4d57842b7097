"""qwenkit: run Qwen3.5-35B-A3B fast on one consumer GPU with llama-cpp-python.

Every notebook step is one call of this package and one `python -m qwenkit` command.
"""
__version__ = "0.1.0"
