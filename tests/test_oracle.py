"""The oracle guard (tests/conftest.py): a missing dlib-bin skips locally and fails under FACESTREAM_REQUIRE_DLIB=1."""

from __future__ import annotations

import pytest

from conftest import REQUIRE_DLIB, oracle_missing


def test_missing_oracle_skips_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_DLIB, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no oracle"):
        oracle_missing("no oracle")


def test_missing_oracle_fails_when_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REQUIRE_DLIB, "1")
    with pytest.raises(pytest.fail.Exception, match=r"no oracle .*FACESTREAM_REQUIRE_DLIB=1"):
        oracle_missing("no oracle")


def test_ci_requires_the_oracle() -> None:
    from pathlib import Path

    assert "export FACESTREAM_REQUIRE_DLIB=1" in (Path(__file__).parent.parent / ".ci" / "run").read_text()
