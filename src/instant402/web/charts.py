"""Calls and earnings over time as SVG, drawn on the server with pygal (no script, no outside host)."""

from __future__ import annotations

import re
from datetime import date

import pygal
from markupsafe import Markup
from pygal.style import Style

from instant402.usage.service import Totals

_STYLE = Style(
    background="transparent",
    plot_background="transparent",
    foreground="#1c1f24",
    foreground_strong="#1c1f24",
    foreground_subtle="#dde1e6",
    colors=("#2f5bea", "#1e7d32", "#a15c00"),
    font_family="system-ui, sans-serif",
    label_font_size=11,
    major_label_font_size=11,
    legend_font_size=12,
    title_font_size=14,
)


def _chart(title: str, days: list[date], series: dict[str, list], value_format, *, counts: bool = False) -> Markup:
    chart = pygal.Bar(
        style=_STYLE,
        width=640,
        height=260,
        title=title,
        js=[],  # pygal links a tooltip script from the internet by default: pages load nothing from outside
        disable_xml_declaration=True,
        show_legend=len(series) > 1,
        legend_at_bottom=True,
        x_label_rotation=0,
        show_minor_x_labels=False,
        truncate_label=-1,
        value_formatter=value_format,
        explicit_size=False,
        margin=8,
    )
    chart.x_labels = [d.strftime("%b %d") for d in days]
    chart.x_labels_major = [d.strftime("%b %d") for d in days[:: max(1, len(days) // 6)]]
    if counts:  # whole numbers only on the axis: at most about six ticks
        top = max((max(v, default=0) for v in series.values()), default=0)
        step = max(1, -(-top // 5))
        chart.y_labels = list(range(0, top + step + 1, step))
    for name, values in series.items():
        chart.add(name, values)
    svg = re.sub(r"<!--.*?-->", "", chart.render(is_unicode=True), flags=re.S)
    svg = re.sub(r"<script.*?</script>", "", svg, flags=re.S)  # tooltip config for the script left out above
    return Markup(svg.replace("<svg ", f'<svg role="img" aria-label="{title}" ', 1))  # noqa: S704 pygal's own SVG


def usage_charts(series: list[tuple[date, Totals]]) -> dict[str, Markup]:
    """Two charts for a list of daily totals: calls (paid, succeeded) and earnings against upstream cost."""
    days = [d for d, _ in series]
    calls = _chart(
        "Calls per day",
        days,
        {"Paid calls": [t.calls for _, t in series], "Succeeded": [t.succeeded for _, t in series]},
        lambda v: f"{int(v)}",
        counts=True,
    )
    # Earnings are exact Decimals; the chart only needs their drawing height, so floats are fine here.
    money = _chart(
        "Earnings and upstream cost per day (USD)",
        days,
        {
            "Earnings": [float(t.earnings_usd) for _, t in series],
            "Upstream cost": [float(t.upstream_cost_usd) for _, t in series],
        },
        lambda v: f"${v:.4f}",
    )
    return {"calls": calls, "earnings": money}
