"""The `videorec` console script, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

VIDEOREC = str(Path(sys.executable).parent / "videorec")


def _run(*args: str, cwd: Path | None = None) -> tuple[int, Any, str]:
    proc = subprocess.run([VIDEOREC, *args], capture_output=True, text=True, cwd=cwd, timeout=600)
    try:
        out = json.loads(proc.stdout) if "--json" in args else proc.stdout
    except json.JSONDecodeError:
        raise AssertionError(f"not one JSON object: {proc.stdout!r} {proc.stderr!r}") from None
    return proc.returncode, out, proc.stderr


def _config(tmp_path: Path, **generate: Any) -> Path:
    f = tmp_path / "c.yaml"
    body = {
        "artifacts": {"root": str(tmp_path / "artifacts")},
        "data": {"dir": str(tmp_path / "data")},
        "generate": {"users": 300, "videos": 200, "days": 7, "seed": 5, **generate},
    }
    f.write_text(yaml.safe_dump(body))
    return f


def test_generate_then_validate_json(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    code, res, _ = _run("generate", "--users", "300", "--videos", "200", "--days", "7", "--seed", "1",
                        "--corrupt", "0.01", "--out", str(out), "--json")  # fmt: skip
    assert code == 0, res
    assert res["out"] == str(out) and res["counts"]["users"] == 300
    injected = res["injected_corruption"]
    assert sum(injected.values()) > 0

    code, val, _ = _run("validate", str(out), "--json")
    assert code == 0
    assert val["ok"] is True
    assert val["tables"]["watch_events"]["by_reason"] == injected
    assert Path(val["quarantine_dir"], "watch_events.parquet").is_file()

    code, val, _ = _run("validate", str(out), "--max-invalid-share", "0.0001", "--json")
    assert code == 1 and val["ok"] is False and "watch_events" in val["violations"][0]


def test_human_output(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    code, text, _ = _run(
        "generate", "--users", "100", "--videos", "50", "--days", "3", "--out", str(out)
    )
    assert code == 0 and "watch_events=" in text
    code, text, _ = _run("validate", str(out))
    assert code == 0 and "watch_events" in text and "quarantine written" in text


def test_bad_inputs_exit_2_with_a_named_problem(tmp_path: Path) -> None:
    code, res, _ = _run("validate", str(tmp_path), "--json")
    assert code == 2 and res["ok"] is False and "not a data set directory" in res["message"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("generate:\n  userz: 5\n")
    code, res, _ = _run("generate", "--config", str(bad), "--out", str(tmp_path / "x"), "--json")
    assert code == 2 and "generate.userz" in res["message"] and str(bad) in res["message"]
    code, _, err = _run("generate", "--users", "1", "--out", str(tmp_path / "y"))
    assert code == 2 and "users" in err
    code, _, err = _run("generate", "--end-date", "yesterday")
    assert code == 2 and "YYYY-MM-DD" in err


def test_run_generates_validates_and_reuses(tmp_path: Path, redis_url: str) -> None:
    cfg = _config(tmp_path)
    code, res, _ = _run("run", "--config", str(cfg), "--json")
    assert code == 0, res
    assert res["data"]["reused"] is False
    assert res["validation"]["ok"] is True
    assert res["services"]["redis"]["url"]
    assert res["data"]["counts"]["users"] == 300
    code, again, _ = _run("run", "--config", str(cfg), "--json")
    assert code == 0 and again["data"]["reused"] is True
    assert again["validation"]["tables"] == res["validation"]["tables"]
    # A changed config makes new data.
    cfg = _config(tmp_path, seed=6)
    code, third, _ = _run("run", "--config", str(cfg), "--json")
    assert code == 0 and third["data"]["reused"] is False
