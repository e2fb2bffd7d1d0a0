"""``--debug`` as the bundle CLI spells it: a value after the flag may switch it off."""

from __future__ import annotations

import pytest

from breastseg.workflows.errors import DEBUG_ENV, debug_requested


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--debug"], True),
        (["--debug", "True"], True),
        (["--debug", "--max_epochs", "2"], True),
        (["--debug", "False"], False),
        (["--debug=0"], False),
        (["--debug=true"], True),
        (["--max_epochs", "2"], False),
    ],
)
def test_debug_flag(argv, expected, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    assert debug_requested(argv) is expected
