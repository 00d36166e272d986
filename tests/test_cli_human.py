"""Every long command in human mode (no --json), as a new user runs them.

Each runs as a real subprocess twice: once with its output going to a pipe (a log
file, CI) and once to a pseudo-terminal, where rich draws live progress bars. Both
must exit 0 with no traceback; the two runs do real work (different seeds, dates
or output folders), so neither is a no-op that skips the progress display.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.slow

VIDEOREC = str(Path(sys.executable).parent / "videorec")


def run_in_pty(args: list[str], timeout_s: float = 600) -> tuple[int, str]:
    """Run a command with stdout and stderr on a pseudo-terminal; (exit code, output)."""
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while True:
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{args} ran past {timeout_s} s")
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                data = b""
            if not data and proc.poll() is not None:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    proc.wait()
    os.close(master)
    return proc.returncode, b"".join(chunks).decode(errors="replace")


def run_in_pipe(args: list[str]) -> tuple[int, str]:
    """Run a command with its output to a pipe; (exit code, stdout + stderr)."""
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


RUNNERS = {"pty": run_in_pty, "pipe": run_in_pipe}


def check(mode: str, args: list[str], expect: str, codes: tuple[int, ...] = (0,)) -> str:
    code, out = RUNNERS[mode]([VIDEOREC, *args])
    assert "Traceback" not in out, out[-3000:]
    assert code in codes, out[-3000:]
    assert expect in out, out[-3000:]
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("human")
    conf = {
        "artifacts": {"root": str(tmp / "artifacts")},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp}/mlflow.db", "registered_model": "tt-human"},
        "spark": {"master": "local[2]", "shuffle_partitions": 4, "driver_memory": "2g"},
        "training": {
            "embed_dim": 32, "id_dim": 16, "hidden_dim": 64, "epochs": 1, "batch_size": 256,
            "text_encoder": "none", "user_buckets": 5003, "video_buckets": 5003,
        },
        "index": {"validation_queries": 100, "latency_queries": 20, "min_vectors": 10,
                  "work_dir": str(tmp / "index-work")},
    }  # fmt: skip
    files = {}
    for seed in (1, 2):
        conf["training"]["seed"] = seed
        files[seed] = tmp / f"c{seed}.yaml"
        files[seed].write_text(yaml.safe_dump(conf))
    return {"tmp": tmp, "conf": files, "data": tmp / "data-pty"}


@pytest.mark.parametrize("mode", ["pty", "pipe"])
def test_long_commands_in_human_mode(mode: str, setup: dict[str, Any]) -> None:
    tmp, seed = setup["tmp"], 1 if mode == "pty" else 2
    conf = ["--config", str(setup["conf"][seed])]
    data = str(tmp / f"data-{mode}")
    check(mode, ["generate", "--users", "400", "--videos", "300", "--days", "8",
                 "--seed", str(seed), "--out", data, *conf], "watch_events=")  # fmt: skip
    check(mode, ["features", "--date", "2026-11-01", "--data", data, *conf], "features ")
    check(mode, ["evaluate", "--data", data, "--models", "MostPopular,ItemKNN",
                 "--out", str(tmp / f"report-{mode}"), *conf], "MostPopular")  # fmt: skip
    # A one-epoch model on 400 users may lose to MostPopular: the gate's line is printed
    # either way, and a refusal exits 3.
    out = check(mode, ["train", "--data", data, "--baselines", "MostPopular", *conf], "TwoTower",
                codes=(0, 3))  # fmt: skip
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)  # a terminal gets colours
    assert re.search(r"tt-human v\d+ \(\S+\): (promoted|refused): ", plain), out[-2000:]
    version = next(w for line in out.splitlines() if line.startswith("model ")
                   for w in line.split()[1:2])  # fmt: skip
    check(mode, ["index", "build", "--model", version, *conf], "recall@")
