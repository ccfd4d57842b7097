"""errors: every error class of the package lives in qwenkit.errors and carries its problem and fix."""
from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import qwenkit
from qwenkit import errors
from qwenkit.errors import QwenkitError

# The server's request-validation errors stay beside the code that raises them: they are not
# kit errors (no fix: their message is the body of an OpenAI-style 400, which has no place for
# one). Nothing else is to be added here: a new error class goes to qwenkit/errors.py.
NOT_YET_MOVED = {
    "qwenkit.serving.app.APIError",
    "qwenkit.serving.protocol.Unsupported",
    "qwenkit.serving.structured.SchemaError",
    "qwenkit.serving.tools.ToolError",
}


def _all_modules() -> list[str]:
    # __main__ runs the CLI when imported
    return [m.name for m in pkgutil.walk_packages(qwenkit.__path__, "qwenkit.") if not m.name.endswith("__main__")]


def _subclasses(cls: type[BaseException]) -> set[type[BaseException]]:
    out: set[type[BaseException]] = set()
    for sub in cls.__subclasses__():
        out |= {sub} | _subclasses(sub)
    return out


@pytest.fixture(scope="module")
def package_exceptions() -> dict[str, type]:
    """Every exception class defined in the package, found after importing each module (so
    classes defined inside functions count too): {module.qualname: class}."""
    for name in _all_modules():
        importlib.import_module(name)
    return {f"{c.__module__}.{c.__qualname__}": c for c in _subclasses(BaseException)
            if c.__module__.startswith("qwenkit.") or c.__module__ == "qwenkit"}


def test_the_walk_sees_the_whole_package(package_exceptions):
    names = _all_modules()
    assert {"qwenkit.summarize", "qwenkit.room.keys", "qwenkit.serving.app", "qwenkit.hub.transfer"} <= set(names)
    # the walk finds classes from subpackages and errors.py alike
    assert "qwenkit.errors.RoomError" in package_exceptions
    assert "qwenkit.serving.app.APIError" in package_exceptions


def test_every_error_class_is_defined_in_errors(package_exceptions):
    stray = sorted(
        name for name, cls in package_exceptions.items()
        if cls.__module__ != "qwenkit.errors"
        and name not in NOT_YET_MOVED
        # a private exception that only carries control flow inside its module (a retry, a
        # skipped chunk) is not an error the user sees; it may stay next to its raiser
        and not (cls.__name__.startswith("_") and not issubclass(cls, QwenkitError)))
    assert not stray, (f"error classes outside qwenkit/errors.py: {stray}; define them in qwenkit/errors.py "
                       "as QwenkitError subclasses (problem, fix) and import them from there")


def test_the_allow_list_only_names_classes_that_still_exist_outside(package_exceptions):
    # a class that has moved must leave the list, so the list can only shrink
    moved_or_gone = sorted(n for n in NOT_YET_MOVED if n not in package_exceptions)
    assert not moved_or_gone, f"remove from NOT_YET_MOVED (moved or renamed): {moved_or_gone}"


def test_every_class_in_errors_is_a_qwenkit_error():
    classes = {n: c for n, c in vars(errors).items() if inspect.isclass(c) and issubclass(c, BaseException)}
    assert set(classes) == set(errors.__all__)
    for name, cls in classes.items():
        assert issubclass(cls, QwenkitError), name
        assert cls.__doc__, f"{name} needs a docstring saying when it is raised"
        e = cls("the problem", "the fix")
        assert (e.problem, e.fix) == ("the problem", "the fix")
        assert str(e) == "the problem\n  fix: the fix"


def test_moved_classes_keep_their_old_import_paths():
    from qwenkit.room import RoomError as from_room
    from qwenkit.room.keys import RoomError as from_keys
    from qwenkit.summarize import DocumentError
    assert from_room is from_keys is errors.RoomError
    assert DocumentError is errors.DocumentError
    assert issubclass(DocumentError, ValueError) and issubclass(from_room, RuntimeError)


def test_a_moved_class_is_the_one_its_module_raises(tmp_path):
    from qwenkit.room.keys import read_keys
    from qwenkit.summarize import read_document
    keys = tmp_path / "keys"
    keys.write_text("only-a-name\n")
    keys.chmod(0o600)
    with pytest.raises(errors.RoomError) as e:
        read_keys(keys)
    assert "line 1" in e.value.problem and e.value.fix
    with pytest.raises(errors.DocumentError) as d:
        read_document(tmp_path / "missing.txt")
    assert "does not exist" in d.value.problem and d.value.fix == "check the path"


# Raises of the kit's errors that give no fix (module, enclosing function): none left; the
# set stays so an exception to the rule has to be written down here, with its reason.
RAISED_WITHOUT_FIX: set[tuple[str, str]] = set()


def _fixless_raises(node, names: set[str], scope: tuple[str, ...] = ()):
    """Yield the enclosing function (dotted) of each `raise <one of names>(problem)` with no fix."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield from _fixless_raises(child, names, scope + (child.name,))
            continue
        if isinstance(child, ast.Raise) and isinstance(child.exc, ast.Call):
            call = child.exc
            name = getattr(call.func, "id", getattr(call.func, "attr", None))
            if name in names and len(call.args) < 2 and not any(k.arg == "fix" for k in call.keywords):
                yield ".".join(scope)
        yield from _fixless_raises(child, names, scope)


def _raises_without_fix() -> set[tuple[str, str]]:
    """(module, function) of every kit error raised with a problem and no fix, read from the source."""
    unmoved = (getattr(importlib.import_module(m), c) for m, c in (n.rsplit(".", 1) for n in NOT_YET_MOVED))
    # the serving classes are not QwenkitErrors yet: their second argument is not a fix
    names = set(errors.__all__) | {c.__name__ for c in unmoved if issubclass(c, QwenkitError)}
    root = Path(qwenkit.__file__).parent
    found = set()
    for path in sorted(root.rglob("*.py")):
        module = ".".join(("qwenkit",) + path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        found |= {(module, where) for where in _fixless_raises(ast.parse(path.read_text()), names)}
    return found


def test_every_raise_of_a_kit_error_names_a_fix():
    found = _raises_without_fix()
    assert not found - RAISED_WITHOUT_FIX, (
        f"kit errors raised without a fix: {sorted(found - RAISED_WITHOUT_FIX)}; "
        "pass the fix as the second argument (what the user should do)")
    fixed = sorted(RAISED_WITHOUT_FIX - found)
    assert not fixed, f"remove from RAISED_WITHOUT_FIX (they name a fix now): {fixed}"
