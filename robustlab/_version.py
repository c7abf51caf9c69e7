"""The one place robustlab's version is written (pyproject reads it: ``[tool.setuptools.dynamic]``)."""

__version__ = "0.1.0"
