"""prefect.yaml's automations, applied by hand in flow tests: no worker runs deployments there, so a test
reads the event a flow emitted from the Prefect API, finds the deployment trigger that matches it in
prefect.yaml and renders that trigger's parameters from the event, as Prefect's automation does (Jinja,
sandboxed). tests/test_deployments.py checks the same triggers on a real server and worker."""

from __future__ import annotations

import time
from datetime import datetime
from fnmatch import fnmatch
from pathlib import Path

import yaml

PREFECT_YAML = Path(__file__).resolve().parent.parent / "prefect.yaml"


def read_events(name: str, since: datetime, wait_s: float, **resource: str) -> list:
    """Events called `name` since `since` whose resource has the given labels, once there are any or
    `wait_s` has passed (the server persists events asynchronously)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter

    event_filter = EventFilter(occurred=EventOccurredFilter(since=since), event=EventNameFilter(name=[name]))
    deadline = time.monotonic() + wait_s
    with get_client(sync_client=True) as client:
        while True:
            events = client.read_events(event_filter, limit=50).events  # the server allows 50 a page
            events = [e for e in events if all(e.resource.get(k) == v for k, v in resource.items())]
            if events or time.monotonic() > deadline:
                return events
            time.sleep(0.5)


def triggered_parameters(event) -> dict[str, dict]:
    """Deployment name -> the parameters of the run its prefect.yaml trigger starts for `event` (only
    deployments with a trigger matching it)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    render = ImmutableSandboxedEnvironment().from_string
    started = {}
    for deployment in yaml.safe_load(PREFECT_YAML.read_text())["deployments"]:
        for trigger in deployment.get("triggers", []):
            if trigger.get("enabled", True) and _matches(trigger, event):
                started[deployment["name"]] = {
                    name: render(value).render(event=event) for name, value in trigger["parameters"].items()
                }
    return started


def _matches(trigger: dict, event) -> bool:
    labels = trigger.get("match", {})
    return event.event in trigger.get("expect", []) and all(
        fnmatch(event.resource.get(label, ""), pattern) for label, pattern in labels.items()
    )
