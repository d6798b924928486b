"""``openglip serve`` under load: requests/s and latency at concurrency 1, 4 and 16, with dynamic batching on
(max batch 8) and off (max batch 1), and the server's memory over 1,000 requests.

    python benchmarks/serve.py [--requests 48] [--long-run 1000] [--min-size 320] [--max-size 512] [--preset tiny]

The model is ``glip_nano`` on CPU (ImageNet EfficientNet-Lite0 and MiniLM from PyPI, random-init fusion head:
the boxes are meaningless, the cost is the real one) at ``--min-size``/``--max-size`` (preset: 512/853). The
server is a child process on a free localhost port; clients are threads with one keep-alive connection each,
all sending scikit-image's chelsea resized to 384x256 (JPEG) with the prompt "cat. dog. sofa." (text features
are cached after the first request, as in real use with a fixed class list). Client and server share the
machine's cores. Everything stays on 127.0.0.1 and the run ends by itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import print_table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

PROMPT = "cat. dog. sofa."


def serve(args) -> None:
    """The server side (run as a child process)."""
    import torch

    from openglip.api import Detector
    from openglip.config import get_preset
    from openglip.models.glip import build_model
    from openglip.serve import ServeSettings, create_app, run_server

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = dataclasses.replace(get_preset(args.preset), min_size=args.min_size, max_size=args.max_size)
    detector = Detector(build_model(config), device="cpu")
    settings = ServeSettings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, timeout_s=600)
    run_server(create_app(detector, settings), port=args.port, log_level="warning")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def photo_jpeg() -> bytes:
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).resize((384, 256)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def load(url: str, image: bytes, total: int, concurrency: int) -> tuple[float, list[float], list[int]]:
    """Send ``total`` requests from ``concurrency`` threads; (wall seconds, latencies, batch sizes)."""
    import httpx

    per_thread = [total // concurrency + (i < total % concurrency) for i in range(concurrency)]

    def client(count: int):
        latencies, batches = [], []
        with httpx.Client(base_url=url, timeout=600) as http:
            for _ in range(count):
                start = time.perf_counter()
                r = http.post("/v1/detect", files={"image": ("c.jpg", image)}, data={"prompt": PROMPT})
                latencies.append(time.perf_counter() - start)
                if r.status_code != 200:
                    raise RuntimeError(f"request failed: {r.status_code} {r.text[:200]}")
                batches.append(r.json()["timing"]["batch_size"])
        return latencies, batches

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(client, per_thread))
    wall = time.perf_counter() - start
    return wall, [x for r in results for x in r[0]], [x for r in results for x in r[1]]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=48, help="requests per concurrency level")
    parser.add_argument("--long-run", type=int, default=1000, help="requests of the memory run")
    parser.add_argument(
        "--preset", default="glip_nano", help="model preset (tiny: a quick check of this script)"
    )
    parser.add_argument("--min-size", type=int, default=320)
    parser.add_argument("--max-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the server")
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--max-batch", type=int, default=8, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.server:
        serve(args)
        return

    from tests.live_server import cli_env, free_port, wait_healthy

    image = photo_jpeg()
    servers: dict[int, tuple[subprocess.Popen, str]] = {}
    try:
        for max_batch in (8, 1):  # both servers stay up; the modes alternate so that a busy spell hits both
            port = free_port()
            command = [
                sys.executable, __file__, "--server", "--port", str(port), "--max-batch", str(max_batch),
                "--min-size", str(args.min_size), "--max-size", str(args.max_size),
                "--threads", str(args.threads), "--max-wait-ms", str(args.max_wait_ms), "--preset", args.preset,
            ]  # fmt: skip
            servers[max_batch] = (
                subprocess.Popen(command, env=cli_env(), cwd=REPO),
                f"http://127.0.0.1:{port}",
            )
        for process, url in servers.values():
            wait_healthy(url, process)
        on, off = servers[8], servers[1]
        # warm-up (first calls, every batch size, text features); the batching server's first 100 requests
        # are also the start of its memory run
        load(on[1], image, 100, 8)
        at_100 = rss_mb(on[0].pid)
        load(off[1], image, 16, 4)
        rows = []
        for concurrency in (1, 4, 16):
            for label, (_, url) in (("on (max 8)", on), ("off (max 1)", off)):
                print(
                    f"batching {label}, concurrency {concurrency}: {args.requests} requests", file=sys.stderr
                )
                wall, latencies, batches = load(url, image, args.requests, concurrency)
                rows.append([
                    label,
                    concurrency,
                    args.requests,
                    f"{args.requests / wall:.2f}",
                    f"{1000 * statistics.median(latencies):.0f}",
                    f"{1000 * percentile(latencies, 99):.0f}",
                    f"{statistics.mean(batches):.2f}",
                ])  # fmt: skip
        served = 100 + 3 * args.requests
        print(f"memory run: up to {args.long_run} requests at concurrency 8", file=sys.stderr)
        start = time.perf_counter()
        load(on[1], image, max(0, args.long_run - served), 8)
        memory = (100, at_100, max(served, args.long_run), rss_mb(on[0].pid), time.perf_counter() - start)
    finally:
        for process, _ in servers.values():
            process.terminate()
        for process, _ in servers.values():
            process.wait(60)

    rows.sort(key=lambda r: r[0] != "on (max 8)")  # stable: on first, then off, each by concurrency
    print_table(
        ["batching", "concurrency", "requests", "req/s", "p50 ms", "p99 ms", "mean batch"],
        rows,
        title=f"openglip serve, {args.preset} on CPU ({args.threads} threads), {args.min_size}-{args.max_size} px, "
        f"384x256 JPEG, max wait {args.max_wait_ms:g} ms",
    )
    first_n, first_mb, last_n, last_mb, seconds = memory
    growth = 100 * (last_mb / first_mb - 1)
    print_table(
        ["after requests", "server RSS MiB"],
        [
            [first_n, f"{first_mb:.0f}"],
            [last_n, f"{last_mb:.0f}"],
            ["growth", f"{growth:+.1f}% (limit +10%)"],
        ],
        title=f"server memory, batching on (the last {last_n - first_n - 3 * args.requests} requests at concurrency 8 "
        f"took {seconds:.0f} s)",
    )
    if growth > 10:
        sys.exit(f"memory grew by {growth:.1f}% between {first_n} and {last_n} requests (limit 10%)")


if __name__ == "__main__":
    main()
