"""Print the package's requirements, with those of the named extras, one per line.

    python deploy/requirements.py cpu > requirements.txt

The Dockerfile installs these in a layer of their own before copying the code, so
a code change does not reinstall TensorFlow.
"""

import sys
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
extras = project["optional-dependencies"]
unknown = sorted(set(sys.argv[1:]) - set(extras))
if unknown:
    sys.exit(f"unknown extras {unknown}; pyproject.toml has {sorted(extras)}")
print(*project["dependencies"], *(d for extra in sys.argv[1:] for d in extras[extra]), sep="\n")
