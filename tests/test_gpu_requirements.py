"""The GPU set (`make setup GPU=1`) resolves, and constraints-gpu.txt locks all of it.

Nothing is installed. `make gpu-set` composes the set exactly as the GPU install does
(requirements.txt and constraints.txt without the projects requirements-gpu.txt replaces,
plus requirements-gpu.txt and constraints-gpu.txt) and pip resolves it with
`pip install --dry-run --report`.

To stay well under a minute the CPU part of the lock is not fetched again: pip resolves
for a scratch environment that holds only the metadata (the ``*.dist-info`` folders) of
this venv's packages that sit at their constraints.txt pins, so it takes those as
installed, reads their dependencies there, and fetches only what the GPU set adds or
changes. The GPU part (torch, faiss-gpu, the NVIDIA wheels, everything pinned in
constraints-gpu.txt) is never taken from this venv, so the test means the same in a CPU
or a GPU venv. The outcome equals an `--ignore-installed` resolution of the whole set
(checked when the lock was made: same 26 packages), in about 15 s instead of 45 s.

It needs the package index (PyPI, or the one pip is configured with): unreachable, the
test fails and says so. It never skips.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PIP_LIMIT_S = 240
# what pip prints when it cannot reach the index (urllib3, requests, the resolver)
UNREACHABLE = re.compile(
    r"NewConnectionError|Max retries exceeded|ConnectTimeout|ReadTimeout|ProxyError|"
    r"Temporary failure in name resolution|Name or service not known|"
    r"Network is unreachable|Connection refused|Could not fetch URL|SSLError"
)


def norm(name: str) -> str:
    """A project name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_lines(path: Path) -> list[tuple[Requirement, str | None]]:
    """Each requirement of a pip requirements/constraints file, with its
    ``# replaces NAME`` marker's NAME (requirements-gpu.txt) or None."""
    out = []
    for raw in path.read_text().splitlines():
        line, _, comment = raw.partition("#")
        if not line.strip():
            continue
        marker = re.match(r"\s*replaces\s+(\S+)", comment)
        out.append((Requirement(line.strip()), marker.group(1) if marker else None))
    return out


def pinned(req: Requirement) -> str:
    """The version of a ``name==version`` requirement."""
    versions = [s.version for s in req.specifier if s.operator == "=="]
    assert len(versions) == 1, f"{req} is not pinned with one =="
    return versions[0]


def pins(path: Path) -> dict[str, str]:
    return {norm(r.name): pinned(r) for r, _ in requirement_lines(path)}


def composed_gpu_set(folder: Path) -> tuple[Path, Path]:
    """requirements.txt and constraints.txt of the GPU set, as `make gpu-set` writes them."""
    make = shutil.which("make")
    assert make, "no make: the GPU set is composed by the Makefile (`make gpu-set`)"
    # an outer `make test` passes its flags (a jobserver among them) through the env
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    subprocess.run(
        [make, "-s", "--no-print-directory", "gpu-set", f"GPU_SET={folder}"],
        cwd=ROOT,
        env=env,
        check=True,
    )
    return folder / "requirements.txt", folder / "constraints.txt"


def gpu_names() -> set[str]:
    """Every project the GPU set pins itself or replaces: never taken from this venv."""
    names = {norm(n) for n in pins(ROOT / "constraints-gpu.txt")}
    for req, replaces in requirement_lines(ROOT / "requirements-gpu.txt"):
        names.add(norm(req.name))
        if replaces:
            names.add(norm(replaces))
    return names


def metadata_env(folder: Path, lock: dict[str, str]) -> tuple[Path, list[str]]:
    """A venv with no packages but the dist-info of this venv's CPU-part packages that
    sit at their locked versions; returns its python and the names it holds."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    target = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    skip = gpu_names()
    held = []
    for info in sorted(Path(sysconfig.get_paths()["purelib"]).glob("*.dist-info")):
        dist = metadata.PathDistribution(info)
        name = norm(dist.metadata["Name"] or "")
        if name in skip or lock.get(name) != dist.version:
            continue  # resolved from the index instead
        shutil.copytree(info, target / info.name)
        held.append(name)
    return python, held


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """pip's --dry-run report for the GPU set, with what it was resolved against."""
    tmp = tmp_path_factory.mktemp("gpu-set")
    requirements, constraints = composed_gpu_set(tmp / "set")
    lock = pins(constraints)
    python, held = metadata_env(tmp / "env", lock)
    report = tmp / "report.json"
    cmd = [
        *(sys.executable, "-m", "pip", "--python", str(python), "install"),
        *("--dry-run", "--quiet", "--report", str(report)),
        *("--timeout", "20", "--retries", "1"),
        *("-r", str(requirements), "-c", str(constraints)),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_LIMIT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"resolving the GPU set took over {PIP_LIMIT_S} s (about 15 s normally): "
            "is the package index (PyPI) slow or unreachable?",
            pytrace=False,
        )
    # the machine's extra local indexes lack most projects; pip says so once per project
    said = "\n".join(
        line for line in (proc.stdout + proc.stderr).splitlines() if "is ignored" not in line
    )
    if proc.returncode != 0:
        if UNREACHABLE.search(said):
            pytest.fail(
                "pip could not reach the package index, so the GPU set (make setup GPU=1) "
                "could not be resolved; this test needs network access to PyPI (or to the "
                f"index pip is configured with). pip said:\n{said[-3000:]}",
                pytrace=False,
            )
        pytest.fail(
            f"the GPU set does not resolve (make setup GPU=1 would fail):\n{said[-3000:]}",
            pytrace=False,
        )
    installs = json.loads(report.read_text())["install"]
    return {
        "lock": lock,
        "held": held,
        "install": {norm(i["metadata"]["name"]): i for i in installs},
    }


def test_gpu_pins_are_the_cpu_releases() -> None:
    """Each substitute pins the release of the project it replaces (so a bump in
    requirements.txt alone fails here), excludes the CPU build the CPU lock pins, and
    constraints-gpu.txt only adds to constraints.txt."""
    cpu_requirements = {norm(r.name): r for r, _ in requirement_lines(ROOT / "requirements.txt")}
    cpu_lock = pins(ROOT / "constraints.txt")
    gpu = requirement_lines(ROOT / "requirements-gpu.txt")
    assert gpu and all(replaces for _, replaces in gpu), (
        'every line of requirements-gpu.txt says which project it replaces ("# replaces NAME")'
    )
    replaced = {norm(replaces) for _, replaces in gpu if replaces}
    for req, replaces in gpu:
        assert replaces and norm(replaces) in cpu_requirements, (
            f"{req.name} replaces {replaces}, which requirements.txt does not pin"
        )
        assert pinned(req) == pinned(cpu_requirements[norm(replaces)]), (
            f"requirements-gpu.txt pins {req}, requirements.txt {cpu_requirements[norm(replaces)]}"
        )
        if norm(req.name) == norm(replaces):
            cpu_build = cpu_lock[norm(replaces)]
            assert not req.specifier.contains(cpu_build, prereleases=True), (
                f"{req} admits {cpu_build}, the CPU build constraints.txt pins"
            )
    kept = set(cpu_lock) - replaced
    both = sorted(kept & set(pins(ROOT / "constraints-gpu.txt")))
    assert not both, f"constraints-gpu.txt repeats pins of constraints.txt: {both}"


@pytest.mark.slow
def test_gpu_set_resolves_to_cuda_torch_and_faiss_gpu(resolved: dict[str, Any]) -> None:
    cpu = pins(ROOT / "requirements.txt")
    install = resolved["install"]

    torch = install.get("torch")
    assert torch, "torch was not resolved for the GPU set"
    meta, url = torch["metadata"], torch["download_info"]["url"]
    assert meta["version"] == cpu["torch"], (meta["version"], url)  # no local label (+cpu)
    assert "+cpu" not in url and "%2Bcpu" not in url, url
    cuda_deps = [d for d in meta.get("requires_dist", []) if d.startswith(("nvidia-", "cuda-"))]
    assert cuda_deps, f"torch {meta['version']} from {url} depends on no CUDA wheel: a CPU build"

    faiss = install.get("faiss-gpu")
    assert faiss, "faiss-gpu was not resolved for the GPU set"
    assert faiss["metadata"]["version"] == cpu["faiss-cpu"]
    assert any(d.startswith("nvidia-") for d in faiss["metadata"].get("requires_dist", []))
    # faiss-cpu installs the same `faiss` module: it must be out of the set
    assert "faiss-cpu" not in install and "faiss-cpu" not in resolved["held"]
    assert "faiss-cpu" not in resolved["lock"]


@pytest.mark.slow
def test_gpu_lock_covers_exactly_what_resolves(resolved: dict[str, Any]) -> None:
    """Every package the GPU set resolves to is pinned, at that version, and no pin of
    constraints-gpu.txt is stale."""
    lock, install = resolved["lock"], resolved["install"]
    unpinned = sorted(
        f"{i['metadata']['name']}=={i['metadata']['version']} (locked: {lock.get(n)})"
        for n, i in install.items()
        if lock.get(n) != i["metadata"]["version"]
    )
    assert not unpinned, (
        "resolved but not locked at that version; re-lock constraints-gpu.txt (its header "
        f"says how; it was resolved for Linux x86-64, Python 3.11): {unpinned}"
    )
    stale = sorted(set(pins(ROOT / "constraints-gpu.txt")) - set(install))
    assert not stale, f"pinned in constraints-gpu.txt but no longer resolved: {stale}"
