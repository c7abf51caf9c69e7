"""Reports: matplotlib plots and a self-contained HTML page per run directory."""
from robustlab.report.html import render, write_report

__all__ = ["render", "write_report"]
