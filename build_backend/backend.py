"""PEP 517 backend: setuptools, plus a build requirement on the torch that is installed where we install to.

An isolated build (`pip install .`) runs in a fresh environment. Listing a bare `torch` there would make pip fetch
the newest release (a multi-GB CUDA build) and compile against headers that do not match the torch the package
will run with. We read the torch version from the target environment's site-packages (pip's isolation hides it
from sys.path but not from sysconfig) and pin exactly that version, which pip takes from its cache or local wheel.
"""

from __future__ import annotations

import os
import re
import sysconfig
from importlib import metadata

from setuptools import build_meta as _orig
from setuptools.build_meta import *  # noqa: F403  (re-export the whole PEP 517 interface)

REQUIREMENTS_ONLY = "MAGVIT2_REQUIREMENTS_ONLY"
PYPROJECT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyproject.toml")


def pinned_torch(key: str = "torch") -> str:
    """A torch requirement of pyproject.toml's [tool.magvit2] table: `torch` (the release set-up installs, our
    fallback when the target environment has none) or `torch-cuda`. A regex read: Python 3.10 has no tomllib."""
    with open(PYPROJECT, encoding="utf-8") as f:
        text = f.read()
    table = re.search(r"^\[tool\.magvit2\][ \t]*$(.*?)(?=^\[|\Z)", text, re.MULTILINE | re.DOTALL)
    value = table and re.search(rf'^{re.escape(key)}[ \t]*=[ \t]*"([^"]+)"', table.group(1), re.MULTILINE)
    if not value:
        raise RuntimeError(f'{PYPROJECT}: no {key} = "..." in the [tool.magvit2] table')
    return value.group(1)


def _installed_torch_requirement() -> list[str]:
    if os.environ.get("MAGVIT2_BUILD_EXT", "1") == "0":
        return []
    paths = [p for p in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]} if os.path.isdir(p)]
    for dist in metadata.distributions(path=paths):
        if (dist.metadata["Name"] or "").lower() == "torch":
            public = dist.version.split("+")[0]
            return [f"torch=={public}"]
    return [pinned_torch()]


def _setuptools_requires(hook, config_settings) -> list[str]:
    # setuptools runs setup.py to collect requirements, before torch is in the build environment: tell setup.py not
    # to import torch (REQUIREMENTS_ONLY), the real build then runs with torch installed.
    os.environ[REQUIREMENTS_ONLY] = "1"
    try:
        return hook(config_settings)
    finally:
        del os.environ[REQUIREMENTS_ONLY]


def get_requires_for_build_wheel(config_settings=None):
    return _setuptools_requires(_orig.get_requires_for_build_wheel, config_settings) + _installed_torch_requirement()


def get_requires_for_build_editable(config_settings=None):
    return _setuptools_requires(_orig.get_requires_for_build_editable, config_settings) + _installed_torch_requirement()
