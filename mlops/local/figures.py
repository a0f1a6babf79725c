"""Figures and HTML templates for the local reports (execution report, profiler report, tuning outputs).

matplotlib loads on first use, with the Agg backend (no display): it costs half a second, and only report
writing needs it. Reports embed figures as base64 PNG data URIs so each one is a single self-contained file.
"""

from __future__ import annotations

import base64
import io
from functools import cache
from typing import Any

import jinja2

STATUS_COLOURS = {"Succeeded": "#3a7d44", "Failed": "#c0392b", "Stopped": "#8e44ad", "Executing": "#e67e22",
                  "Completed": "#3a7d44", "InProgress": "#e67e22", "NoIssuesFound": "#3a7d44",
                  "IssuesFound": "#c0392b", "Error": "#8e44ad"}


@cache
def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(figure: Any, dpi: int = 90) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(figure)
    return buffer.getvalue()


def data_uri(png_bytes: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes).decode("ascii")


def figure_uri(figure: Any) -> str:
    return data_uri(png(figure))


@cache
def templates() -> jinja2.Environment:
    environment = jinja2.Environment(loader=jinja2.PackageLoader("mlops.local", "templates"),
                                     autoescape=True,
                                     trim_blocks=True, lstrip_blocks=True)
    environment.globals["colour"] = lambda status: STATUS_COLOURS.get(status, "#7f8c8d")
    return environment


def render(template: str, **context: Any) -> str:
    return templates().get_template(template).render(**context)
