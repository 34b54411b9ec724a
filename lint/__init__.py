"""Project-specific import-linter contracts (``[tool.importlinter]`` in pyproject.toml)."""
