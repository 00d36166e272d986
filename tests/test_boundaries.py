"""The house's import rules, checked in fresh interpreters (``sys.modules`` after import).

Data flows one way: the core imports no stage, a reader process (serving) never
loads the index builder, torch or Spark, and precompute loads neither the builder
nor the feature, training or evaluation code.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

STAGES = (
    "videorec.features",
    "videorec.training",
    "videorec.ranking",
    "videorec.indexing",
    "videorec.precompute",
    "videorec.evaluation",
    "videorec.datagen",
)


def loaded_after(module: str) -> set[str]:
    """The modules a fresh interpreter holds after ``import module``."""
    code = f"import sys, json, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def offenders(loaded: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(
        m for m in loaded if m in prefixes or m.startswith(tuple(p + "." for p in prefixes))
    )


def test_the_index_reader_loads_neither_torch_nor_the_builder() -> None:
    loaded = loaded_after("videorec.indexing.reader")
    assert offenders(loaded, ("torch", "pyspark", "videorec.indexing.build")) == []


@pytest.mark.parametrize("module", ["videorec.precompute.run", "videorec.precompute.fresh"])
def test_precompute_loads_no_builder_torch_spark_or_earlier_stage(module: str) -> None:
    loaded = loaded_after(module)
    banned = ("torch", "pyspark", "videorec.indexing.build", "videorec.features",
              "videorec.training", "videorec.ranking", "videorec.evaluation",
              "videorec.datagen")  # fmt: skip
    assert offenders(loaded, banned) == []


@pytest.mark.parametrize(
    "core",
    [
        "videorec.config",
        "videorec.artifacts",
        "videorec.artifact_names",
        "videorec.contract",
        "videorec.redis_keys",
        "videorec.dataset",
        "videorec.orchestrator",
    ],
)
def test_the_core_imports_no_stage(core: str) -> None:
    assert offenders(loaded_after(core), (*STAGES, "airflow")) == []


def test_the_command_line_loads_its_stages_only_when_a_command_runs() -> None:
    """`videorec --help` (and parsing any command) imports no stage, torch or Spark:
    each command imports its stage inside its handler."""
    loaded = loaded_after("videorec.cli")
    assert offenders(loaded, (*STAGES, "torch", "pyspark", "faiss")) == []
