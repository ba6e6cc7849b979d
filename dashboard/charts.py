"""Altair (Vega-Lite) charts of the frames in `fedkube.dashboard.frames`. Pure module.

Every function takes a tidy frame and returns a chart; the pages hand it to
``st.altair_chart``. Colours of update statuses are the same on every chart.
"""

from __future__ import annotations

from typing import Final

import altair as alt
import pandas as pd

from fedkube.dashboard.frames import DURATION_PARTS
from fedkube.vocabulary import AssignmentStatus

STATUS_COLORS: Final = {
    AssignmentStatus.ACCEPTED.value: "#2e7d32",
    AssignmentStatus.REJECTED.value: "#c62828",
    AssignmentStatus.FAILED.value: "#f9a825",
}
_STATUS_SCALE: Final = alt.Scale(domain=list(STATUS_COLORS), range=list(STATUS_COLORS.values()))
HEIGHT: Final = 260


def metric_chart(frame: pd.DataFrame, metric: str, source: str) -> alt.Chart:
    """`metric` per round from `source` (train or validation) as a line with points."""
    data = frame[(frame["metric"] == metric) & (frame["source"] == source)]
    return (
        alt.Chart(data, title=f"{metric} ({source})", height=HEIGHT)
        .mark_line(point=True)
        .encode(
            x=alt.X("round:Q", title="round", axis=alt.Axis(tickMinStep=1)),
            y=alt.Y("value:Q", title=metric, scale=alt.Scale(zero=False)),
            tooltip=["round:Q", alt.Tooltip("value:Q", format=".4g")],
        )
    )


def duration_chart(frame: pd.DataFrame) -> alt.Chart:
    """Each round's wall time as stacked bars of its parts."""
    order = [part for part, _ in DURATION_PARTS]
    return (
        alt.Chart(frame, title="Round duration", height=HEIGHT)
        .mark_bar()
        .encode(
            x=alt.X("round:O", title="round"),
            y=alt.Y("sum(seconds):Q", title="seconds"),
            color=alt.Color("part:N", sort=order, scale=alt.Scale(domain=order)),
            order=alt.Order("part_order:Q"),
            tooltip=["round:O", "part:N", alt.Tooltip("seconds:Q", format=".3f")],
        )
        .transform_calculate(
            part_order=" + ".join(f"(datum.part == '{p}' ? {i} : 0)" for i, p in enumerate(order))
        )
    )


def updates_chart(frame: pd.DataFrame, quorum: int) -> alt.LayerChart | alt.FacetChart:
    """Update records per round by status, stacked, with the quorum as a rule."""
    bars = (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X("round:O", title="round"),
            y=alt.Y("sum(count):Q", title="updates"),
            color=alt.Color("status:N", scale=_STATUS_SCALE),
            tooltip=["round:O", "status:N", "sum(count):Q"],
        )
    )
    rule = (
        alt.Chart(pd.DataFrame({"quorum": [quorum]}))
        .mark_rule(strokeDash=[4, 4], color="black")
        .encode(y="quorum:Q", tooltip=[alt.Tooltip("quorum:Q", title="clients.minUpdates")])
    )
    return alt.layer(bars, rule, title=f"Updates per round (quorum {quorum})", height=HEIGHT)


def combiner_chart(frame: pd.DataFrame) -> alt.Chart:
    """Accepted updates per round, one line per combiner."""
    return (
        alt.Chart(frame, title="Accepted updates per combiner", height=HEIGHT)
        .mark_line(point=True)
        .encode(
            x=alt.X("round:Q", title="round", axis=alt.Axis(tickMinStep=1)),
            y=alt.Y("count:Q", title="accepted updates"),
            color="combiner:N",
            tooltip=["round:Q", "combiner:N", "count:Q"],
        )
    )


def participation_chart(frame: pd.DataFrame) -> alt.Chart:
    """Client x round, coloured by the client's best update status that round."""
    return (
        alt.Chart(frame, title="Participation", height=alt.Step(16))
        .mark_rect()
        .encode(
            x=alt.X("round:O", title="round"),
            y=alt.Y("client:N", title="client", sort="ascending"),
            color=alt.Color("status:N", scale=_STATUS_SCALE),
            tooltip=["client:N", "round:O", "status:N"],
        )
    )


def refusals_chart(frame: pd.DataFrame) -> alt.Chart:
    """Updates not accepted, per reason."""
    return (
        alt.Chart(frame, title="Refused and failed updates by reason", height=HEIGHT)
        .mark_bar()
        .encode(
            x=alt.X("count:Q", title="updates"),
            y=alt.Y("reason:N", sort="-x", title="reason"),
            color=alt.Color("status:N", scale=_STATUS_SCALE),
            tooltip=["reason:N", "status:N", "count:Q"],
        )
    )
