"""The suite's own guards: skips outside the allow-list fail the run; Redis never skips.

Each runs a small inner pytest session (pytester, in a subprocess) with this suite's
real conftest.py and allow-list, so what is checked is the code CI runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(os.environ.get("VIDEOREC_GUARD_CONFTEST_DIR", Path(__file__).parent))


def _suite(pytester: pytest.Pytester, extra_conftest: str = "") -> None:
    pytester.makeconftest((HERE / "conftest.py").read_text() + extra_conftest)
    (pytester.path / "skip_allowlist.yaml").write_text((HERE / "skip_allowlist.yaml").read_text())


def test_a_skip_not_on_the_allow_list_fails_the_run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    _suite(pytester)
    pytester.makepyfile(
        **{
            "tests/test_inner": """
import pytest

def test_skipped():
    pytest.skip("the service was not there")

def test_fine():
    pass
"""
        }
    )
    monkeypatch.delenv("CI", raising=False)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*SKIPPED (not allowed) tests/test_inner.py::test_skipped*"])


def test_an_allowed_skip_passes_outside_ci_and_fails_in_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    _suite(pytester)
    pytester.makepyfile(
        **{
            "tests/test_inner": """
import pytest

def test_real_data():
    pytest.skip("no shared MovieLens copy at /nowhere")
"""
        }
    )
    monkeypatch.delenv("CI", raising=False)
    assert pytester.runpytest_subprocess("-p", "no:cacheprovider").ret == pytest.ExitCode.OK
    monkeypatch.setenv("CI", "true")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_the_redis_fixture_starts_a_server_instead_of_skipping(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing answers at the default address in the inner session: the fixture must
    # start a server (as the product does) and the test must run, not skip.
    _suite(
        pytester,
        "\nfrom videorec import services as _s\n_s.DEFAULT_REDIS_URL = 'redis://127.0.0.1:1/0'\n",
    )
    pytester.makepyfile(
        **{
            "tests/test_inner": """
import redis

def test_uses_redis(redis_url):
    assert ":6379" not in redis_url and ":1/" not in redis_url
    client = redis.Redis.from_url(redis_url)
    client.set("videorec:guard", "1")
    assert client.get("videorec:guard") == b"1"
"""
        }
    )
    monkeypatch.delenv("REDIS_URL", raising=False)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK
