"""Comments and docs cite only paths that exist: every repository path named in the package, the kernels, the tests,
the benchmarks, the build files and the README."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# build products named in tests and setup.py: the compiled extensions, the marker of a build without them
BUILT = {"magvit2/_C", "magvit2/_pure_python"}
TOP = ("magvit2/", "csrc/", "tests/", "benchmarks/", "examples/", "docs/", ".ci/", "build_backend/")
# a path: one of the top folders, then path characters; placeholders (<kind>, *) and URLs are not paths
TOPS = "|".join(re.escape(t) for t in TOP)
PATH = re.compile(rf"(?<![\w/.-])((?:{TOPS})[\w./-]*)")
SOURCES = ("*.py", "*.cpp", "*.cu", "*.h", "*.md", "*.sh", "*.toml", "*.txt", "Makefile")


def cited() -> dict[str, list[str]]:
    files = subprocess.run(["git", "ls-files", *SOURCES], cwd=ROOT, capture_output=True, text=True, check=True)
    found: dict[str, list[str]] = {}
    for name in files.stdout.split():
        text = (ROOT / name).read_text(errors="replace")
        for m in PATH.finditer(text):
            path = m.group(1).rstrip(".,:;)")
            after = text[m.end(1) : m.end(1) + 1]
            if after in "<*{" and after or "..." in path:
                continue
            found.setdefault(path, []).append(name)
    return found


def test_every_cited_path_exists():
    missing = {p: sorted(set(w)) for p, w in cited().items() if p not in BUILT and not (ROOT / p).exists()}
    assert not missing, "\n".join(f"{p}: cited in {', '.join(w)}" for p, w in sorted(missing.items()))
