"""Notifiers: one module per integration (slack.py, pagerduty.py, webhook.py) over one HTTP
sender with its retry policy (base.py)."""

from __future__ import annotations

import time
from typing import Callable, Mapping

from tokenpulse.alerts.notify.base import (
    CHANNEL_TYPES, MAX_INLINE_RETRY_AFTER_S, Channel, Context, Notifier, Response, Sent, iso, parse_channels, post)
from tokenpulse.alerts.notify.pagerduty import PagerDutyNotifier
from tokenpulse.alerts.notify.slack import SlackNotifier
from tokenpulse.alerts.notify.webhook import WebhookNotifier

__all__ = ["CHANNEL_TYPES", "MAX_INLINE_RETRY_AFTER_S", "Channel", "Context", "Notifier", "PagerDutyNotifier", "Response",
           "Sent", "SlackNotifier", "WebhookNotifier", "build_notifiers", "iso", "parse_channels", "post"]


def build_notifiers(channels: Mapping[str, Channel], context: Context = Context(),
                    sleep: Callable[[float], None] = time.sleep, backoff_s: float = 0.5) -> dict[str, Notifier]:
    kinds = {"slack": SlackNotifier, "pagerduty": PagerDutyNotifier, "webhook": WebhookNotifier}
    return {name: kinds[ch.type](ch, context, sleep, backoff_s) for name, ch in channels.items()}
