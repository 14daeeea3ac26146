"""pytest plugin (loaded from pyproject's addopts): every test gets its own empty widget
settings folder, so a value one test sets is never what the next widget starts with, and
no test reads or writes the user's real napari-fmbff settings."""

import pytest


@pytest.fixture(autouse=True)
def _private_widget_settings(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FMBFF_CONFIG_DIR", str(tmp_path_factory.mktemp("fmbff-config")))
