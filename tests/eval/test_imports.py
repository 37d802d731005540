"""magvit2.eval stays in its layer: no trainer (Lightning, magvit2.train) and no test-only dependencies at import."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_pulls_no_trainer_or_test_dependencies():
    code = (
        "import sys, magvit2.eval as e\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'lightning', 'pytorch_lightning', 'scipy', "
        "'skimage', 'matplotlib', 'torchvision'} or m.startswith('magvit2.train'))\n"
        "print(','.join(bad))\n"
        "assert all(hasattr(e, n) for n in e.__all__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
