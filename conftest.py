"""Root conftest: load the harness's pytest plugin for tests/ and scenarios/."""

pytest_plugins = ("harness.plugin",)
