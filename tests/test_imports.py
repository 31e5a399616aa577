"""The package imports without the libraries that only some routes use, so that a machine lacking them
(a GPU image without `datasets`, say) runs everything else: `datasets` (data.source=hf), sacremoses
(data.detokenize_train=moses), matplotlib (bench plots) and the benchmark peers are imported where
they are used, never at a module's top."""

import subprocess
import sys

from tests.helpers import REPO

OPTIONAL = ["datasets", "sacremoses", "matplotlib", "transformers", "ctranslate2", "joeynmt", "eole"]

# Block the optional libraries, then import every module of the package (the peer scripts run in
# the peers' own environments and are left out).
IMPORT_ALL = f"""
import importlib, pkgutil, sys
for name in {OPTIONAL!r}:
    sys.modules[name] = None  # `import name` now fails as if it were not installed
import transformer_mt
modules = [m.name for m in pkgutil.walk_packages(transformer_mt.__path__, "transformer_mt.")
           if ".peer_scripts" not in m.name]
for module in modules:
    importlib.import_module(module)
print(len(modules))
"""


def test_every_module_imports_without_the_optional_libraries():
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.split()[-1]) > 30  # every module, not an empty walk
