"""HTTP API under a bounded load from a second process, against the same workflow without it.

The server side (this process) runs a layered DAG of no-op python steps on a fresh database,
alternating two phases in each round:

- alone:  the engine only (no HTTP server, no clients)
- loaded: the same engine with the API served on 127.0.0.1 while a second process (this script
          with `--client`) keeps N SSE clients on `GET /api/events` and W workers calling
          `GET /api/runs` (at most `--rate` requests/s in total; 0: as fast as they can)

It prints the engine's wall time per run in both phases (the overhead of serving), requests/s
and p50/p99 latency of `GET /api/runs`, and what the SSE clients received (events, gaps,
duplicates, reconnects).

    python bench/api_load.py [--sse 20] [--workers 4] [--rate 200] [--rounds 3] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import aiohttp  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"


# --------------------------------------------------------------------------- load generator


ID_LINE = re.compile(rb"^id: (\d+)$", re.M)


async def sse_client(session: aiohttp.ClientSession, url: str, stats: dict, stop: asyncio.Event):
    """Follow /api/events from the current end; reconnect with Last-Event-ID when told to.

    Reads whole chunks and finds ids with a regex, so the client costs little CPU."""
    last: int | None = None
    while not stop.is_set():
        headers = {"Last-Event-ID": str(last)} if last is not None else {}
        try:
            async with session.get(f"{url}/api/events", headers=headers) as resp:
                stats["connected"] = True
                rest = b""
                async for chunk in resp.content.iter_any():
                    data = rest + chunk
                    cut = data.rfind(b"\n\n") + 2
                    data, rest = data[:cut], data[cut:]
                    for m in ID_LINE.finditer(data):
                        eid = int(m.group(1))
                        if last is not None and eid != last + 1:
                            stats["duplicates" if eid <= last else "gaps"] += 1
                        last = eid
                        stats["events"] += 1
                    stats["last"] = last or 0
                    if b"event: reconnect" in data:
                        stats["reconnects"] += 1
                    if stop.is_set():
                        return
        except (TimeoutError, aiohttp.ClientError):
            stats["errors"] += 1
            await asyncio.sleep(0.1)


async def runs_worker(
    session: aiohttp.ClientSession, url: str, interval: float, out: list, stop: asyncio.Event
):
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    while not stop.is_set():
        t = time.perf_counter()
        async with session.get(f"{url}/api/runs", params={"limit": "20"}) as resp:
            await resp.read()
            ok = resp.status == 200
        out.append((time.perf_counter() - t, ok))
        if interval:
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))


async def client_main(url: str, n_sse: int, workers: int, rate: float) -> None:
    stop = asyncio.Event()
    fields = ("events", "gaps", "duplicates", "reconnects", "errors", "last")
    sse_stats: list[dict[str, Any]] = [
        {**dict.fromkeys(fields, 0), "connected": False} for _ in range(n_sse)
    ]
    latencies: list[tuple[float, bool]] = []
    connector = aiohttp.TCPConnector(limit=n_sse + workers + 4)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [asyncio.create_task(sse_client(session, url, s, stop)) for s in sse_stats]
        while not all(s["connected"] for s in sse_stats):
            await asyncio.sleep(0.01)
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        interval = workers / rate if rate else 0.0
        t0 = time.perf_counter()
        tasks += [
            asyncio.create_task(runs_worker(session, url, interval, latencies, stop))
            for _ in range(workers)
        ]
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        elapsed = time.perf_counter() - t0
        target = int(line.split()[1])  # "stop LAST_EVENT_ID": read the stream to its end
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(s["last"] < target for s in sse_stats):
            await asyncio.sleep(0.05)
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    lat = sorted(d for d, _ in latencies)
    result = {
        "requests": len(lat),
        "failed": sum(1 for _, ok in latencies if not ok),
        "seconds": elapsed,
        "p50_ms": _pct(lat, 50) * 1000,
        "p99_ms": _pct(lat, 99) * 1000,
        "sse": sse_stats,
    }
    sys.stdout.write(json.dumps(result) + "\n")


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(p / 100 * len(values) + 0.5) - 1))
    return values[k]


# --------------------------------------------------------------------------- server side


def layered(layers: int, width: int) -> Any:
    from engine.models import WorkflowSpec

    steps = {}
    for layer in range(layers):
        for w in range(width):
            needs = [f"s{layer - 1}_{x}" for x in range(width)] if layer else []
            steps[f"s{layer}_{w}"] = {"agent": "py", "with": {"call": "_noop:noop"}, "needs": needs}
    return WorkflowSpec.model_validate(
        {"name": "bench", "agents": {"py": {"kind": "python"}}, "steps": steps,
         "concurrency": 100_000}
    )  # fmt: skip


async def run_phase(spec: Any, db: Path, runs: int, args: argparse.Namespace, loaded: bool):
    from engine.api import ApiServer, create_app
    from engine.config import Settings
    from engine.runner import Engine
    from engine.store import Store

    store = Store.open(db)
    engine = Engine(store, max_concurrency=100_000)
    await engine.start()
    server = client = None
    times: list[float] = []
    result: dict[str, Any] | None = None
    try:
        if loaded:
            app = create_app(engine, Settings(db=db), token=TOKEN)
            server = await ApiServer(app, "127.0.0.1", 0).start()
            client = subprocess.Popen(
                [sys.executable, __file__, "--client", server.url, "--sse", str(args.sse),
                 "--workers", str(args.workers), "--rate", str(args.rate)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                env=dict(os.environ, PYTHONPATH=str(ROOT)),
            )  # fmt: skip
            ready = await asyncio.to_thread(client.stdout.readline)  # type: ignore[union-attr]
            assert ready.strip() == "ready", ready
        for _ in range(runs):
            t = time.perf_counter()
            run = await engine.run(spec)
            times.append(time.perf_counter() - t)
            assert run.status.value == "succeeded", run.status
        if loaded:
            assert client is not None
            await store.flush()
            emitted = store.query("SELECT count(*) AS n, max(id) AS m FROM events")[0]
            out, _ = await asyncio.to_thread(client.communicate, f"stop {emitted['m']}\n", 120)
            result = json.loads(out.strip().splitlines()[-1])
            result["events_emitted"] = emitted["n"]
            result["dropped"] = server.state.hub.dropped if server else 0
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait()
        if server is not None:
            await server.stop()
        await engine.aclose()
        store.close()
    return times, result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)
    ap.add_argument("--sse", type=int, default=20, help="concurrent SSE clients")
    ap.add_argument("--workers", type=int, default=4, help="concurrent GET /api/runs callers")
    ap.add_argument("--rate", type=float, default=200, help="GET /api/runs per second (0: max)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=5, help="workflow runs per phase")
    ap.add_argument("--shape", default="50x20", help="layers x width of the no-op DAG")
    args = ap.parse_args()
    if args.client:
        asyncio.run(client_main(args.client, args.sse, args.workers, args.rate))
        return
    layers, width = (int(x) for x in args.shape.split("x"))
    spec = layered(layers, width)
    steps = layers * width
    tmp = Path(tempfile.mkdtemp(prefix="flowdeck-apibench-"))
    alone: list[float] = []
    loaded: list[float] = []
    results = []
    for i in range(args.rounds):
        t, _ = asyncio.run(run_phase(spec, tmp / f"alone-{i}.db", args.runs, args, False))
        alone += t
        t, r = asyncio.run(run_phase(spec, tmp / f"loaded-{i}.db", args.runs, args, True))
        loaded += t
        results.append(r)
    a, lo = statistics.median(alone), statistics.median(loaded)
    requests = sum(r["requests"] for r in results)
    seconds = sum(r["seconds"] for r in results)
    failed = sum(r["failed"] for r in results)
    sse = [s for r in results for s in r["sse"]]
    expected = [r["events_emitted"] for r in results]
    complete = sum(1 for r in results for s in r["sse"] if s["events"] == r["events_emitted"])
    print(f"workflow {args.shape} ({steps} no-op python steps), {args.runs} runs per phase, "
          f"{args.rounds} rounds; load: {args.sse} SSE clients + {args.workers} workers "
          f"at {'max' if not args.rate else f'{args.rate:g}/s'} on GET /api/runs")  # fmt: skip
    print(f"engine alone:        {a * 1000:8.1f} ms/run  ({steps / a:,.0f} steps/s)")
    print(f"engine + API load:   {lo * 1000:8.1f} ms/run  ({steps / lo:,.0f} steps/s)")
    print(
        f"overhead of serving: {(lo / a - 1) * 100:+7.1f} %  ({(lo - a) / steps * 1e6:+.1f} µs/step)"
    )
    print(f"GET /api/runs:       {requests / seconds:8.0f} req/s  "
          f"p50 {statistics.median(r['p50_ms'] for r in results):.1f} ms  "
          f"p99 {max(r['p99_ms'] for r in results):.1f} ms  ({requests} requests, {failed} failed)")  # fmt: skip
    if not sse:
        print("SSE:                 no streams (--sse 0)")
    else:
        print(f"SSE:                 {len(sse)} streams, events per stream "
              f"{min(s['events'] for s in sse)}..{max(s['events'] for s in sse)} "
              f"(emitted {min(expected)}..{max(expected)} per round), {complete}/{len(sse)} "
              f"complete, gaps {sum(s['gaps'] for s in sse)}, "
              f"duplicates {sum(s['duplicates'] for s in sse)}, "
              f"reconnects {sum(s['reconnects'] for s in sse)}, "
              f"dropped {sum(r['dropped'] for r in results)}")  # fmt: skip
    with contextlib.suppress(OSError):
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()


if __name__ == "__main__":
    main()
