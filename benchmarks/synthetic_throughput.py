"""Benchmark: synthetic generation requests against the stand-in with a fixed latency (target <= 1.15x ideal).

Usage: ``python benchmarks/synthetic_throughput.py [--requests 2000] [--concurrency 32] [--latency-ms 100]``.
Starts the local Azure OpenAI stand-in as its own process (so it does not share this process's
interpreter lock), then in the same run:
- plain: the bare ``openai.AsyncAzureOpenAI`` client, ``asyncio.gather`` under a semaphore;
- ft-assets: ``run_requests`` (retries, cache, budget accounting) with an empty cache;
- again: ``run_requests`` once more with the now-filled cache, counting what reaches the server.
The ideal is requests x latency / concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ft_assets.llm.calls import ChatRequest, ResponseCache, run_requests  # noqa: E402
from ft_assets.llm.client import ClientSettings, async_client  # noqa: E402

API_KEY = "benchmark-key"


def start_standin(latency_ms: int) -> tuple[subprocess.Popen, str]:
    """Start the stand-in process; return it and its address."""
    command = [sys.executable, "-m", "ft_assets_tests.standin", "--port", "0", "--latency-ms", str(latency_ms),
               "--api-key", API_KEY]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline() if process.stdout else ""
    if "listening on" not in line:
        process.kill()
        raise SystemExit(f"stand-in did not start: {line!r}")
    return process, line.split("listening on", 1)[1].strip()


def server_total(url: str) -> int:
    """Return how many API requests the stand-in has answered."""
    with urllib.request.urlopen(f"{url}/_standin/stats", timeout=10) as response:
        return json.load(response)["total"]


async def plain(settings: ClientSettings, requests: list[ChatRequest], concurrency: int) -> None:
    """The bare client: one create() per request, at most ``concurrency`` at once."""
    semaphore = asyncio.Semaphore(concurrency)
    async with async_client(settings) as client:

        async def one(request: ChatRequest) -> None:
            async with semaphore:
                await client.chat.completions.create(**request.body())

        await asyncio.gather(*(one(r) for r in requests))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-ms", type=int, default=100)
    args = parser.parse_args()
    ideal = args.requests * args.latency_ms / 1000 / args.concurrency
    process, url = start_standin(args.latency_ms)
    try:
        settings = ClientSettings(azure_endpoint=url, api_key=API_KEY, api_version="2025-04-01-preview")
        requests = [ChatRequest("gpt-4o-mini", (("user", f"write example {i}"),), 0.7, i) for i in range(args.requests)]
        start = time.perf_counter()
        asyncio.run(plain(settings, requests, args.concurrency))
        plain_s = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as cache_dir:
            cache = ResponseCache(cache_dir)
            before = server_total(url)
            start = time.perf_counter()
            results, _ = asyncio.run(
                run_requests(lambda: async_client(settings), requests, endpoint=url, cache=cache,
                             concurrency=args.concurrency, log=lambda _: None)
            )  # fmt: skip
            ours_s = time.perf_counter() - start
            sent = server_total(url) - before
            before = server_total(url)
            start = time.perf_counter()
            asyncio.run(run_requests(lambda: async_client(settings), requests, endpoint=url, cache=cache,
                                     concurrency=args.concurrency, log=lambda _: None))  # fmt: skip
            again_s = time.perf_counter() - start
            again_sent = server_total(url) - before
    finally:
        process.terminate()
        process.wait(timeout=10)
    print(
        f"{args.requests} requests, concurrency {args.concurrency}, latency {args.latency_ms} ms: ideal {ideal:.2f} s"
    )
    print(f"plain openai client: {plain_s:.2f} s ({plain_s / ideal:.2f}x ideal)")
    ok = sum(r.status == "ok" for r in results)
    print(f"ft-assets run_requests: {ours_s:.2f} s ({ours_s / ideal:.2f}x ideal, target <= 1.15); "
          f"{ok}/{len(results)} ok, {sent} requests reached the server")  # fmt: skip
    print(f"re-run with the cache: {again_s:.2f} s, {again_sent} requests reached the server (target 0)")


if __name__ == "__main__":
    main()
