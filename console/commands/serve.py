"""`flowdeck serve`: the engine plus the HTTP API, no UI.

Binds 127.0.0.1 unless `--host` says otherwise (then it warns, and reads need the token too).
On start it resumes runs no live engine holds; with `--retain-days N` it prunes ended runs older
than N days on start and hourly (engine/retention.py). SIGINT/SIGTERM: stop starting steps, give
running ones the grace period, close the API, exit 0 (interrupted runs stay resumable; a second
signal interrupts at once).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from console.commands.common import open_store
from engine.config import Settings
from engine.errors import Conflict, InputError, NotFound

log = logging.getLogger("flowdeck.serve")

RETENTION_INTERVAL = 3600.0
"""Seconds between two prunes with `--retain-days`."""


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("serve", parents=[common], help="run the engine with the HTTP API, no UI")
    p.add_argument("--host", help="address to bind (default 127.0.0.1, env FLOWDECK_HOST)")
    p.add_argument("--port", type=int, help="port (default 8765, env FLOWDECK_PORT; 0: any free)")
    p.add_argument(
        "--workflows", metavar="DIR", help="directory of workflow files startable by name"
    )
    p.add_argument("--log-json", action="store_true", help="JSON log lines on stderr")
    p.add_argument("--concurrency", type=int, help="steps at once across the engine")
    p.add_argument("--no-resume", action="store_true", help="do not resume abandoned runs on start")
    p.add_argument(
        "--retain-days",
        type=float,
        metavar="N",
        help="prune ended runs older than N days, on start and then hourly (see `flowdeck prune`)",
    )
    p.set_defaults(func=cmd_serve)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from console import logs
    from engine import tokens

    host = args.host if args.host is not None else settings.host
    port = args.port if args.port is not None else settings.port
    if not 0 <= port <= 65535:
        raise InputError(f"--port {port}: must be 0..65535")
    if not host:
        raise InputError("--host: must not be empty")
    if args.concurrency is not None:
        if args.concurrency < 1:
            raise InputError("--concurrency must be at least 1")
        settings.max_concurrency = args.concurrency
    if args.retain_days is not None and not args.retain_days > 0:
        raise InputError(f"--retain-days {args.retain_days:g}: must be more than 0")
    if args.workflows is not None and not Path(args.workflows).is_dir():
        raise InputError(f"--workflows {args.workflows}: not a directory")
    store = open_store(settings, must_exist=False)
    try:
        token = tokens.resolve(settings.db, settings.token)
        stop_logging = logs.setup(json_lines=args.log_json)
        try:
            if token.created:
                sys.stdout.write(
                    f"API token (saved to {token.source}, mode 0600; shown only this once):\n"
                    f"{token.value}\n"
                )
                sys.stdout.flush()
            elif len(token.value) < tokens.MIN_LENGTH:
                log.warning("the API token is short (%d characters)", len(token.value))
            return asyncio.run(_serve(store, settings, args, host, port, token.value))
        finally:
            stop_logging()
    finally:
        store.close()


async def _serve(
    store: Any, settings: Settings, args: argparse.Namespace, host: str, port: int, token: str
) -> int:
    from console import logs
    from engine import retention
    from engine.api import ApiServer, create_app
    from engine.runner import Engine

    engine = Engine(store, max_concurrency=settings.max_concurrency)
    await engine.start()
    engine.events.subscribe(logs.event_logger(logging.getLogger("flowdeck.events")))
    loopback = is_loopback(host)
    app = create_app(
        engine, settings, token=token, workflows=args.workflows, reads_need_auth=not loopback
    )
    server = ApiServer(app, host, port)
    try:
        try:
            await server.start(
                access_log=logging.getLogger("aiohttp.access"), access_log_class=logs.AccessLogger
            )
        except OSError as e:
            raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        if not loopback:
            log.warning(
                "listening on %s, beyond this machine: every request needs the token; "
                "put TLS in front of it",
                host,
            )
        log.info("listening on %s (db %s)", server.url, settings.db, extra={"url": server.url})
        stop = asyncio.Event()
        remove = _install_signals(engine, stop)
        pruning = None
        try:
            if not args.no_resume:
                await resume_abandoned(engine)
            if args.retain_days is not None:
                pruning = asyncio.create_task(
                    retention.retention_loop(store, args.retain_days, RETENTION_INTERVAL),
                    name="flowdeck-retention",
                )
            await stop.wait()
            log.info("stopping: waiting up to %g s for running steps", settings.grace)
            server.state.stopping = True
            await engine.shutdown(settings.grace)
        finally:
            remove()
            if pruning is not None:
                pruning.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pruning
    finally:
        await server.stop()
        await engine.aclose()
    log.info("stopped")
    return 0


async def resume_abandoned(engine: Any) -> list[str]:
    """Resume every run that has not ended and that no live engine holds (lease run out, or
    its owner is a process of this host that no longer exists)."""
    from engine.runner import owner_is_dead

    now = time.time()
    rows = await engine.store.aread(
        lambda db: list(
            db.query(
                "SELECT id, owner, lease_until FROM runs WHERE status IN "
                "('pending','running','interrupted') ORDER BY created_at"
            )
        )
    )
    rows = [
        r
        for r in rows
        if r["lease_until"] is None
        or r["lease_until"] < now
        or r["owner"] == engine.owner
        or (r["owner"] and owner_is_dead(r["owner"]))
    ]
    resumed = []
    for row in rows:
        try:
            await engine.resume(row["id"])
        except (Conflict, NotFound) as e:
            log.info("not resuming %s: %s", row["id"], e, extra={"run": row["id"]})
            continue
        except Exception:
            log.exception("resuming %s failed", row["id"], extra={"run": row["id"]})
            continue
        resumed.append(row["id"])
        log.info("resumed run %s", row["id"], extra={"run": row["id"]})
    return resumed


def _install_signals(engine: Any, stop: asyncio.Event) -> Any:
    loop = asyncio.get_running_loop()
    count = {"n": 0}

    def handler(signame: str) -> None:
        count["n"] += 1
        if count["n"] == 1:
            log.info("%s received", signame)
            stop.set()
        else:
            log.warning("%s again: interrupting running steps now", signame)
            for run in list(engine.runs.values()):
                run.interrupt()

    sigs = (signal.SIGINT, signal.SIGTERM)
    for sig in sigs:
        loop.add_signal_handler(sig, handler, sig.name)

    def remove() -> None:
        for sig in sigs:
            loop.remove_signal_handler(sig)

    return remove
