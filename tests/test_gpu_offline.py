"""bench/gpu-offline.sh carries what the GPU bench and the GPU tests need beyond a CUDA
PyTorch image: the packages this project's modules on that path import, and what those
require. If the model code starts to import a package that neither such an image nor the
script's wheels hold, the offline run would fail there; this fails here first."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "bench" / "gpu-offline.sh"
# What the script counts on a CUDA image to hold (its header says so), with what they need.
IMAGE = ("torch", "torchvision", "numpy", "pillow", "timm", "huggingface-hub",
         "prometheus-client", "pytest")  # fmt: skip
IMPORTS = """
import ast, json, sys
from pathlib import Path
sys.path[:0] = ["bench", "services/embedder/tests", "tests"]
from importlib.metadata import packages_distributions
import gpu, embedder_fakes, test_embedder_model, test_gpu_bench
root = Path.cwd().resolve()
names = set()
for module in list(sys.modules.values()):
    file = getattr(module, "__file__", None)
    path = Path(file).resolve() if file and Path(file).is_absolute() else Path("/")
    if root in path.parents and ".venv" not in path.parts and path.suffix == ".py":
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
found = packages_distributions()
print(json.dumps(sorted({d for n in names for d in found.get(n, [])})))
"""


def carried() -> set[str]:
    match = re.search(r'^carried="([^"]+)"$', SCRIPT.read_text(), re.MULTILINE)
    assert match, "the script names the packages it carries in carried=..."
    return {canonicalize_name(n) for n in match.group(1).split("|")}


def with_requirements(names: tuple[str, ...]) -> set[str]:
    """``names`` and everything their installed metadata requires (no extras)."""
    seen: set[str] = set()
    todo = [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    return seen


def test_the_offline_gpu_run_carries_all_that_a_cuda_image_lacks() -> None:
    done = subprocess.run(
        [sys.executable, "-c", IMPORTS], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ours = {"imgsim-core", "imgsim-embedder"}
    imported = {canonicalize_name(d) for d in json.loads(done.stdout.splitlines()[-1])} - ours
    assert {"open-clip-torch", "pydantic", "torch"} <= imported  # the probe saw the imports

    needed = with_requirements(tuple(imported | carried()))
    missing = needed - with_requirements(IMAGE) - carried()

    assert not missing, f"bench/gpu-offline.sh must carry {sorted(missing)}"
