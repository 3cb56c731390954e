"""Calls and earnings over time as SVG, drawn on the server with pygal (no script, no outside host)."""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal

import pygal
from markupsafe import Markup
from pygal.style import Style

from instant402.usage.service import Totals
from instant402.web.rendering import money

_STYLE = Style(
    background="transparent",
    plot_background="transparent",
    foreground="#1c1f24",
    foreground_strong="#1c1f24",
    foreground_subtle="#dde1e6",
    colors=("#1e7d32", "#b3261e", "#a15c00"),
    font_family="system-ui, sans-serif",
    label_font_size=13,
    major_label_font_size=13,
    legend_font_size=14,
    title_font_size=16,
)


def nice_ticks(top: Decimal, count: int = 5, *, whole: bool = False) -> list[Decimal]:
    """Round tick values from 0 to at least ``top``: steps of 1, 2 or 5 times a power of ten, at any scale
    (``whole``: steps of at least 1, for counts)."""
    if top <= 0:
        return [Decimal(0), Decimal(1)]
    raw = top / count
    power = Decimal(1).scaleb(raw.adjusted())
    step = next(power * m for m in (1, 2, 5, 10) if power * m >= raw)
    if whole:
        step = max(step, Decimal(1))
    ticks, value = [Decimal(0)], Decimal(0)
    while value < top:
        value += step
        ticks.append(value)
    return ticks


def _label(day: date, today: date) -> str:
    return "Today" if day == today else day.strftime("%b %d")


def _chart(
    title: str,
    days: list[date],
    series: dict[str, list[Decimal]],
    value_format,
    *,
    today: date,
    empty: str,
    whole: bool = False,
    narrow: bool = False,
) -> Markup:
    if not any(v for values in series.values() for v in values):
        # No axes over nothing: say what the chart will show.
        return Markup('<div class="chart-empty" role="note"><h3>{}</h3><p class="muted">{}</p></div>').format(
            title, empty
        )
    chart = pygal.Bar(
        style=_STYLE,
        width=360 if narrow else 640,
        height=300 if narrow else 280,
        title=title,
        js=[],  # pygal links a tooltip script from the internet by default: pages load nothing from outside
        disable_xml_declaration=True,
        show_legend=len(series) > 1,
        legend_at_bottom=True,
        x_label_rotation=0,
        show_minor_x_labels=False,
        truncate_label=-1,
        value_formatter=lambda v: value_format(Decimal(str(v))),
        explicit_size=False,
        margin=8,
    )
    labels = [_label(d, today) for d in days]
    chart.x_labels = labels
    major = labels[:: max(1, len(days) // (3 if narrow else 6))]
    if labels and labels[-1] not in major:
        major.append(labels[-1])  # today's bar is always labelled
    chart.x_labels_major = major
    top = max((max(v, default=Decimal(0)) for v in series.values()), default=Decimal(0))
    # Ticks chosen here, exactly, and drawn through the same formatter as the values.
    chart.y_labels = [float(t) for t in nice_ticks(top, 4 if narrow else 5, whole=whole)]
    for name, values in series.items():
        # The drawing needs heights only: floats are fine here; labels come from the exact values.
        chart.add(name, [{"value": float(v), "label": f"{name}: {value_format(v)}"} for v in values])
    svg = re.sub(r"<!--.*?-->", "", chart.render(is_unicode=True), flags=re.S)
    svg = re.sub(r"<script.*?</script>", "", svg, flags=re.S)  # tooltip config for the script left out above
    # Values on hover without a script: each bar's description becomes an SVG <title>, which browsers show.
    svg = re.sub(r'<desc class="label">(.*?)</desc>', r"<title>\1</title>", svg)
    return Markup(svg.replace("<svg ", f'<svg role="img" aria-label="{title}" ', 1))  # noqa: S704 pygal's own SVG


def _both(*args, **kwargs) -> Markup:
    """The chart drawn for wide screens and again, with fewer labels and larger text, for phones (CSS shows one)."""
    wide, narrow = _chart(*args, **kwargs), _chart(*args, **kwargs, narrow=True)
    if wide == narrow:  # an empty state is the same at any width
        return wide
    return Markup('<div class="chart-wide">{}</div><div class="chart-narrow">{}</div>').format(wide, narrow)


def _count(value: Decimal) -> str:
    return f"{int(value)}"


def usage_charts(series: list[tuple[date, Totals]], today: date | None = None) -> dict[str, Markup]:
    """Two charts for a list of daily totals: paid calls by outcome, and earnings against upstream cost."""
    days = [d for d, _ in series]
    today = today or (days[-1] if days else None)
    calls = _both(
        "Paid calls per day",
        days,
        {
            "Settled": [Decimal(t.settled) for _, t in series],
            "Failed": [Decimal(t.failed) for _, t in series],
            "Refused": [Decimal(t.refused) for _, t in series],
        },
        _count,
        today=today,
        whole=True,
        empty="No paid calls in this period yet. Settled, failed and refused calls will show here per day.",
    )
    money_chart = _both(
        "Earnings and upstream cost per day",
        days,
        {"Earnings": [t.earnings_usd for _, t in series], "Upstream cost": [t.upstream_cost_usd for _, t in series]},
        money,
        today=today,
        empty="No earnings or upstream cost in this period yet.",
    )
    return {"calls": calls, "earnings": money_chart}
