"""Every Examples section of the public API runs and shows what it says (doctest)."""

import doctest
import importlib
import inspect
import pkgutil

import pytest

import skpcoreset


def _public_objects():
    modules = ["skpcoreset"] + [
        info.name
        for info in pkgutil.walk_packages(skpcoreset.__path__, prefix="skpcoreset.")
        if not any(part.startswith("_") for part in info.name.split(".")[1:])
    ]
    found = {}
    for name in modules:
        module = importlib.import_module(name)
        for attr in getattr(module, "__all__", []):
            obj = getattr(module, attr)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and "Examples" in (inspect.getdoc(obj) or ""):
                found.setdefault(f"{obj.__module__}.{obj.__qualname__}", obj)
    return dict(sorted(found.items()))


PUBLIC = _public_objects()


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_docstring_example_runs(name):
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    obj = PUBLIC[name]
    for test in finder.find(obj, name, globs=dict(vars(inspect.getmodule(obj)))):
        runner.run(test)
    assert runner.failures == 0, f"{name}: {runner.failures} failing example(s)"
