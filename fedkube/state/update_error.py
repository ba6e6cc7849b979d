"""How a refused or failed update reads in the dashboard. Pure module.

`ClientSummary.last_error` is the "reason: message" of a client's latest update
that was not accepted; both stores build it with error_text so they agree.
"""

from __future__ import annotations


def error_text(reason: str, message: str) -> str:
    """``"reason: message"``; just the one that is set when the other is empty."""
    if reason and message:
        return f"{reason}: {message}"
    return reason or message
