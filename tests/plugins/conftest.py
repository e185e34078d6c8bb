"""Fixtures of the plugin tests."""
from __future__ import annotations

import pytest

from .helpers import plugin_context


@pytest.fixture
def ctx(tmp_path):
    """A plugin context (all installed plugins) with a files directory in tmp_path."""
    return plugin_context(tmp_path)
