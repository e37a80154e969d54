"""Route matching: the first route whose path prefix and host match wins, else the default.

``current_plan`` carries a request's plan over to a newer snapshot (for a retry, a hedge
or a rescue, which choose from the routing state of now).
"""

from __future__ import annotations

from router.state.snapshot import RoutePlan, Snapshot


def host_matches(pattern: str, hostname: str) -> bool:
    pattern = pattern.lower()
    if pattern.startswith("*."):
        return hostname.endswith(pattern[1:])
    return hostname == pattern


def match_plan(snapshot: Snapshot, hostname: str, path: str) -> tuple[int | None, RoutePlan]:
    """(route index or None, plan) for a lower-case host without port and a normalised path.

    ``hostname`` is only read when a route matches on host (callers may pass "" otherwise).
    """
    routes = snapshot.config.routes
    for i in range(len(routes)):  # indexing, not zip/enumerate: no tuple per route
        m = routes[i].match
        prefix = m.path_prefix
        if prefix is not None and not path.startswith(prefix):
            continue
        if m.host is not None and not host_matches(m.host, hostname):
            continue
        return i, snapshot.route_plans[i]
    return None, snapshot.default_plan


def current_plan(old: Snapshot, new: Snapshot, plan: RoutePlan) -> RoutePlan:
    """``plan`` (from ``old``) as it stands in ``new``; the old one if its route is gone."""
    if plan.route is None:
        return new.default_plan
    for i, route in enumerate(old.config.routes):
        if route is plan.route:
            routes = new.config.routes
            if i < len(routes) and routes[i] == route:
                return new.route_plans[i]
            break
    return plan
