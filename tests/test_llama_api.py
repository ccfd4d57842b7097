"""qwenkit.llama_api: every name the kit uses beyond llama-cpp-python's public API exists in the
installed version, and a missing name or another version fails with one clear error."""
from __future__ import annotations

import ast
import ctypes
import re
import sys
import types
from pathlib import Path

import pytest

from qwenkit import llama_api
from qwenkit.errors import LlamaCppError, QwenkitError

llama_cpp = pytest.importorskip("llama_cpp")
ROOT = Path(__file__).resolve().parent.parent


# ---- the installed llama-cpp-python has every name --------------------------------------------
@pytest.mark.parametrize("need", llama_api.NEEDS, ids=lambda n: n.path)
def test_installed_package_has(need):
    assert llama_api.need_problems(llama_cpp, need) == []
    if "." not in need.path and not need.path.startswith("_") and need.path != "Llama":
        assert getattr(llama_api.C, need.path) is getattr(llama_cpp, need.path)  # reached through C


@pytest.mark.parametrize("name", sorted(llama_api.GGML_FUNCTIONS))
def test_ggml_function_is_declared(name):
    fn = llama_api.ggml(name)
    _, restype, argtypes = llama_api.GGML_FUNCTIONS[name]
    assert fn.restype is restype and list(fn.argtypes) == argtypes


def test_ggml_functions_answer():
    n = llama_api.ggml("ggml_backend_dev_count")()
    assert n >= 1
    dev = llama_api.ggml("ggml_backend_dev_get")(0)
    assert llama_api.ggml("ggml_backend_dev_name")(dev)
    cpu = llama_api.ggml("ggml_backend_dev_by_type")(0)
    assert cpu and llama_api.ggml("ggml_backend_dev_buffer_type")(cpu)


def test_installed_version_is_the_tested_one():
    assert llama_cpp.__version__ == llama_api.TESTED_VERSION
    assert llama_api.version_problem(llama_cpp.__version__) is None
    llama_api.check(llama_cpp)  # what importing the module did


def test_c_holds_only_the_checked_names():
    assert hasattr(llama_cpp, "llama_model_quantize")
    with pytest.raises(AttributeError):
        llama_api.C.llama_model_quantize  # noqa: B018 - not in NEEDS, so not reachable


def test_version_pins_agree():
    """pyproject.toml pins the range the module checks; requirements.txt and the build
    scripts install the tested version."""
    import tomllib
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lo, hi = llama_api.VERSION_RANGE
    assert [d for d in deps if d.startswith("llama-cpp-python")] == [f"llama-cpp-python[server]>={lo},<{hi}"]
    assert f"llama-cpp-python[server]=={llama_api.TESTED_VERSION}" in (ROOT / "requirements.txt").read_text()
    for script in ("scripts/setup.sh", "scripts/llama_flags.sh"):
        assert re.search(rf'LLAMA_VERSION="(\$\{{LLAMA_VERSION:-)?{re.escape(llama_api.TESTED_VERSION)}',
                         (ROOT / script).read_text()), script
    # doctor keeps its own copy (it must run when this module's import check fails): the same
    from qwenkit import doctor
    assert doctor.LLAMA_CPP_VERSION == llama_api.TESTED_VERSION


# ---- a doctored package fails with every problem named ----------------------------------------
def _copy(module) -> types.SimpleNamespace:
    return types.SimpleNamespace(**vars(module))


def _package(changes: dict) -> types.SimpleNamespace:
    """The real package's names, with some replaced; {"sub.name": None} removes a nested one."""
    pkg = _copy(llama_cpp)
    for path, value in changes.items():
        *parents, last = path.split(".")
        obj = pkg
        for p in parents:
            setattr(obj, p, _copy(getattr(obj, p)))
            obj = getattr(obj, p)
        if value is None:
            delattr(obj, last)
        else:
            setattr(obj, last, value)
    return pkg


def _error(pkg, **kw) -> LlamaCppError:
    with pytest.raises(LlamaCppError) as e:
        llama_api.check(pkg, **kw)
    assert isinstance(e.value, QwenkitError)
    return e.value


def test_missing_names_are_all_named_with_the_versions_and_the_fix():
    pkg = _package({"llama_state_seq_get_data_ext": None, "llama_grammar.SchemaConverter": None,
                    "_ctypes_extensions.load_shared_library": None, "__version__": "0.3.40"})
    err = _error(pkg, allow_untested=True)  # missing names fail even where an untested version may run
    for name in ("llama_cpp.llama_state_seq_get_data_ext is missing",
                 "llama_cpp.llama_grammar.SchemaConverter is missing",
                 "llama_cpp._ctypes_extensions.load_shared_library is missing"):
        assert name in err.problem
    assert "llama-cpp-python 0.3.40" in err.problem and "tested with 0.3.36" in err.problem
    fix = err.fix or ""
    assert "pip install" in fix and "llama-cpp-python==0.3.36" in fix
    assert 'CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=' in fix
    assert llama_api.UNTESTED_ENV not in fix  # no way around a missing name
    assert str(err).count("\n") >= 3  # one line each


def test_missing_name_at_the_tested_version():
    err = _error(_package({"LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY": None}))
    assert err.problem.splitlines()[0] == ("llama-cpp-python 0.3.36 (the tested version is 0.3.36) "
                                           "lacks what qwenkit uses:")
    assert "llama_cpp.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY is missing" in err.problem


def test_wrong_argument_count():
    def llama_memory_seq_rm(mem, seq_id):  # llama.cpp's takes (mem, seq_id, p0, p1)
        return True

    err = _error(_package({"llama_memory_seq_rm": llama_memory_seq_rm}))
    assert "llama_cpp.llama_memory_seq_rm takes 2 arguments; the kit passes 4" in err.problem


def test_missing_struct_field():
    """A field that is gone takes an assignment silently (a Python attribute): found here."""
    fields = [f for f in llama_cpp.llama_context_params._fields_ if f[0] != "kv_unified"]
    params = type("llama_context_params", (ctypes.Structure,), {"_fields_": fields})
    params().kv_unified = True  # what the server would do, without an error
    err = _error(_package({"llama_context_params": params}))
    assert "llama_cpp.llama_context_params has no field 'kv_unified'" in err.problem


class _LlamaWithoutEvalFlag:
    def __init__(self):
        self._model = self._seed = self._is_recurrent = self._is_hybrid = self._logits_all = None
        self.input_ids, self.n_tokens, self.model_params = [], 0, None
        self.cache = self.draft_model = self.last_n_tokens_size = self.n_threads = self.model_path = None

    ctx = model = None


class _LlamaComplete(_LlamaWithoutEvalFlag):
    def reset(self):
        self._requires_eval = True


def test_missing_instance_attribute_of_llama():
    """Llama's private attributes are set in its methods, not on the class: read from its source."""
    err = _error(_package({"Llama": _LlamaWithoutEvalFlag}))
    assert err.problem.count("\n") == 1  # that one attribute, nothing else
    assert "llama_cpp.Llama has no attribute '_requires_eval'" in err.problem
    llama_api.check(_package({"Llama": _LlamaComplete}))  # assigned in any method of the class counts


def test_untested_version_fails_unless_allowed():
    pkg = _package({"__version__": "0.3.37"})
    err = _error(pkg)
    assert err.problem == ("llama-cpp-python 0.3.37 is outside the tested range >=0.3.36,<0.3.37 "
                           "(qwenkit is tested with 0.3.36)")
    fix = err.fix or ""
    assert "llama-cpp-python==0.3.36" in fix and f"{llama_api.UNTESTED_ENV}=1" in fix
    with pytest.warns(RuntimeWarning, match="every name qwenkit uses exists"):
        llama_api.check(pkg, allow_untested=True)


@pytest.mark.parametrize("version, ok", [("0.3.36", True), ("0.3.36.post1", True), ("0.3.35", False),
                                         ("0.3.37", False), ("0.4.0", False), ("1.0", False)])
def test_version_range(version, ok):
    assert (llama_api.version_problem(version) is None) == ok


def test_import_with_a_missing_name_fails_in_a_fresh_process(tmp_path):
    """The check runs at import: a llama_cpp without a name the kit uses stops the import."""
    import subprocess
    code = ("import llama_cpp; del llama_cpp.llama_state_seq_set_data_ext\n"
            "from qwenkit.errors import LlamaCppError\n"
            "try:\n    import qwenkit.llama_api\nexcept LlamaCppError as e:\n    print('ERR', e.problem)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                         check=False)
    assert "ERR llama-cpp-python 0.3.36" in out.stdout, out.stderr
    assert "llama_cpp.llama_state_seq_set_data_ext is missing" in out.stdout


# ---- nothing else reaches past the public API ----------------------------------------------------
_PRIVATE_ATTRS = {"_model", "_ctx", "_requires_eval", "_seed", "_is_recurrent", "_is_hybrid", "_logits_all",
                  "_internals", "_ctypes_extensions", "_base_path", "_format_literal", "_add_rule"}
_PRIVATE_MODULES = re.compile(r"^llama_cpp\.(_\w+|llama_chat_format|llama_grammar|llama_cpp)$")


def _reaches_past(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr in _PRIVATE_ATTRS
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
            out.append(f"{path.name}:{node.lineno} .{node.attr}")
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        out += [f"{path.name}:{node.lineno} import {n}" for n in names if _PRIVATE_MODULES.match(n)]
    return out


def test_only_llama_api_reaches_past_the_public_api():
    """Private attributes of Llama and llama-cpp-python's private modules appear nowhere in the
    package but in qwenkit/llama_api.py (qwenkit/__init__.py loads llama_cpp.llama_cpp before
    numpy, by name only)."""
    found = []
    for path in sorted((ROOT / "qwenkit").rglob("*.py")):
        if path.name == "llama_api.py" or path == ROOT / "qwenkit" / "__init__.py":
            continue
        found += _reaches_past(path)
    assert found == []
    assert _reaches_past(ROOT / "qwenkit" / "llama_api.py")  # the scan does see them where they are
