"""The delivery targets of a config: `notify.<name>` notifiers and `agent.<name>` agents, built
anew at start and at each reload, and by `watchd canary` for its probes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TextIO

from nats.aio.client import Client
from nats.js import JetStreamContext

from watchd import config
from watchd.agents.budget import InFlight
from watchd.agents.nats import NatsRunner
from watchd.config import Loaded
from watchd.dispatch import Target
from watchd.errors import WatchdError
from watchd.jobs.builtin_watches import CANARY_TARGET
from watchd.jobs.canary import CanarySink
from watchd.notify.console import ConsoleNotifier
from watchd.notify.http_client import HttpClient, Misconfigured
from watchd.store import Store

log = logging.getLogger("watchd")


def build_targets(
    loaded: Loaded,
    *,
    http: HttpClient,
    nc: Client | None = None,
    js: JetStreamContext | None = None,
    store: Store | None = None,
    on_watch: Callable[[], None] | None = None,
    console: TextIO | None = None,
    in_flight: InFlight | None = None,
) -> dict[str, Target]:
    """Targets by `then` name: `notify.<name>` and `agent.<name>`. One whose config cannot be used (an
    unset secret, an agent type not built yet) dead-letters its handoffs with the reason. The HTTP
    notifiers send through `http`, which the caller owns and closes. Agents of
    type nats need the daemon's NATS connection (`nc`, `js`); anthropic agents keep their runs in
    `store`, call `on_watch` when they add a follow-up watch, and share `in_flight` (the tokens their
    calls hold against the budgets). Console notifiers print to `console` (default stdout)."""
    # Each kind of target's code is imported by the first target of that kind: an idle daemon with
    # only the console notifier loads none of the HTTP notifiers nor the command runner.
    targets: dict[str, Target] = {}
    in_flight = in_flight or InFlight()
    for name, notifier in loaded.config.notify.items():
        target = f"notify.{name}"
        try:
            if isinstance(notifier, config.ConsoleNotifier):
                targets[target] = ConsoleNotifier(console)
            elif isinstance(notifier, config.TelegramNotifier):
                from watchd.notify.telegram import TelegramNotifier

                targets[target] = TelegramNotifier(notifier, http=http, name=target)
            elif isinstance(notifier, config.SlackNotifier):
                from watchd.notify.slack import SlackNotifier

                targets[target] = SlackNotifier(notifier, http=http, name=target)
            else:
                from watchd.notify.webhook import WebhookNotifier

                targets[target] = WebhookNotifier(notifier, http=http, name=target)
        except WatchdError as exc:
            log.error("%s%s", exc.message, f" ({exc.hint})" if exc.hint else "")
            targets[target] = Misconfigured(target, exc.message)
    for name, agent in loaded.config.agent.items():
        target = f"agent.{name}"
        if isinstance(agent, config.CommandAgent):
            from watchd.agents.command import CommandRunner

            try:
                targets[target] = CommandRunner(
                    agent, name=target, base_dir=loaded.base_dir, store=store, state_dir=loaded.state_dir
                )
            except WatchdError as exc:
                log.error("%s: %s", target, exc.message)
                targets[target] = Misconfigured(target, f"{target}: {exc.message}")
        elif isinstance(agent, config.NatsAgent):
            if nc is None or js is None:
                targets[target] = Misconfigured(target, f"{target}: no NATS connection to hand off on")
            else:
                targets[target] = NatsRunner(agent, name=target, js=js, nc=nc)
        elif store is None:
            targets[target] = Misconfigured(target, f"{target}: no state store to keep its runs in")
        else:
            # Imported here: the SDK costs ~1 s at start-up, paid only when an anthropic agent exists.
            from watchd.agents.anthropic import AnthropicRunner

            try:
                targets[target] = AnthropicRunner(
                    agent,
                    name=target,
                    config=loaded.config,
                    store=store,
                    js=js,
                    on_watch=on_watch,
                    in_flight=in_flight,
                )
            except WatchdError as exc:
                log.error("%s", exc.message)
                targets[target] = Misconfigured(target, exc.message)
    if nc is not None:
        targets[CANARY_TARGET] = CanarySink(nc)  # the end of the canary's path (watchd/jobs/canary.py)
    return targets
