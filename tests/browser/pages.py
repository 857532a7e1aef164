"""Reading numbers out of a dashboard page, shared by the HTTP and the browser tests."""

from __future__ import annotations

import re


def body_numbers(html: str) -> list[str]:
    """The numbers of the view itself (after its title), not the KPI strip every page shares."""
    body = html.split("<h1>", 1)[1]
    body = re.sub(r"<[^>]+>", " ", body)
    return re.findall(r"-?\d[\d,]*(?:\.\d+)?", body)
