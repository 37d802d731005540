"""The examples in the package's docstrings run and print what they say (doctest), so they cannot go stale;
examples that need files from outside (weights, datasets) are marked `# doctest: +SKIP` or written without prompts."""

import doctest
import importlib
import pkgutil

import pytest

import magvit2

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(magvit2.__path__, "magvit2.") if not m.name.endswith(("__main__", "._C"))
)


def test_every_module_is_collected():
    assert "magvit2.nn.video.tokenizer" in MODULES and "magvit2.ops.ar_decode" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} failed"
