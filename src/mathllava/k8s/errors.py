"""The one error of the cluster code, and the API server's own words in it."""

from __future__ import annotations

import json


class ClusterError(RuntimeError):
    """A refusal by the API server, a missing CRD or runtime, or a failed or timed-out job."""


def api_error(err, what: str) -> ClusterError:
    """The server's own words: its message and each cause's field, from a Status body."""
    try:
        body = json.loads(err.body)
    except (TypeError, ValueError):
        return ClusterError(f"{what}: HTTP {err.status} {err.reason}")
    causes = [f"{c.get('field', '')}: {c.get('message', '')}".strip(": ")
              for c in (body.get("details") or {}).get("causes") or []]
    text = body.get("message") or err.reason
    if causes:
        text += "".join(f"\n  {c}" for c in causes)
    return ClusterError(f"{what} (HTTP {err.status}, {body.get('reason', err.reason)}): {text}")
