"""The routing tree: which channels hear an alert, decided by its labels (Alertmanager's ``route``).

Without ``alert_route`` an alert goes to its rule's channels (``default`` unless the rule or an
override names others), each filtered by the channel's own ``match``. With it, one tree decides
for every rule, so an operator writes a few routes instead of an override per rule::

    alert_route:
      routes:
        - match: {rule: tenant_throttled}
          channels: [ops-hook]
          continue: true                     # keep looking at the next routes too
        - match: {severity: critical}        # label -> value or list of values; rule = alertname
          channels: [pager, slack]
        - match: {severity: [warning, info]}
          channels: [slack]
          routes:                            # children refine their parent
            - match: {tenant: [acme]}
              channels: [slack, acme-hook]

As in Alertmanager: the routes are tried in order and the first that matches wins, unless it says
``continue``; a matching route with children hands the alert to the first child that matches, and
keeps it when none does (a route without channels of its own then passes it on to the next). An alert no route matches goes to its rule's channels. A channel's own
``match`` still applies on top.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from tokenpulse.errors import ConfigError

_KEYS = {"match", "channels", "continue", "routes"}


@dataclass(frozen=True)
class Route:
    match: Mapping[str, tuple[str, ...]]
    channels: tuple[str, ...]
    continue_: bool = False
    routes: tuple["Route", ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k, "") in values for k, values in self.match.items())

    def channels_for(self, labels: Mapping[str, str]) -> tuple[str, ...] | None:
        """This route's decision for ``labels`` (None: it does not match)."""
        if not self.matches(labels):
            return None
        below = decide(self.routes, labels)
        return below if below is not None else (self.channels or None)


def decide(routes: Iterable[Route], labels: Mapping[str, str]) -> tuple[str, ...] | None:
    """The channels of the first matching route (and of later ones while ``continue``); None: none matched."""
    out: list[str] = []
    matched = False
    for route in routes:
        got = route.channels_for(labels)
        if got is None:
            continue
        matched = True
        out += [c for c in got if c not in out]
        if not route.continue_:
            break
    return tuple(out) if matched else None


def channels_of(routes: tuple[Route, ...]) -> set[str]:
    out: set[str] = set()
    for r in routes:
        out |= set(r.channels) | channels_of(r.routes)
    return out


def parse_tree(raw: Mapping[str, Any] | None, source: str = "alert_route") -> tuple[Route, ...]:
    """The ``alert_route`` setting: {routes: [...]} (the root: its channels are each rule's own)."""
    if not raw:
        return ()
    if not isinstance(raw, Mapping) or set(raw) - {"routes"}:
        raise ConfigError(f"{source}: must be {{routes: [{{match, channels, continue, routes}}, ...]}}")
    return parse_routes(raw.get("routes"), f"{source}.routes")


def parse_routes(raw: Any, source: str = "alert_route.routes") -> tuple[Route, ...]:
    if raw in (None, [], {}):
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: must be a list of routes ({{match, channels, continue, routes}})")
    return tuple(_route(item, f"{source}[{n}]") for n, item in enumerate(raw))


def _route(item: Any, where: str) -> Route:
    if not isinstance(item, Mapping) or set(item) - _KEYS:
        raise ConfigError(f"{where}: a route is a mapping of {', '.join(sorted(_KEYS))}")
    match = item.get("match", {})
    if not isinstance(match, Mapping) or not all(isinstance(v, (str, list)) for v in match.values()):
        raise ConfigError(f"{where}.match: must map a label (severity, rule, tenant, ...) to a value or a list")
    channels = item.get("channels", [])
    channels = [channels] if isinstance(channels, str) else channels
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise ConfigError(f"{where}.channels: must be a list of channel names")
    cont = item.get("continue", False)
    if not isinstance(cont, bool):
        raise ConfigError(f"{where}.continue: must be true or false")
    children = parse_routes(item.get("routes"), f"{where}.routes")
    if not channels and not children:
        raise ConfigError(f"{where}: names no channels and has no routes")
    norm = {("alertname" if k == "rule" else str(k)): tuple(str(x) for x in ([v] if isinstance(v, str) else v))
            for k, v in match.items()}
    return Route(norm, tuple(channels), cont, children)
