"""The job page with 200 thumbnails in headless Chromium on the embedded stack: time to first
paint and to the last thumbnail painted, and the API's latency for another client while the
page loads, against the same request with no page open, measured in the same run.

    .venv/bin/python -m bench.ui_first_paint [--images 1000] [--tiles 200] [--loads 5]
        [--request /jobs/1] [--root DIR]

The stack is the embedded one (SQLite, the SQLAlchemy broker, a Celery worker left running, as
in the demo) with a token, so the page fetches every thumbnail with it. Each load is a fresh
browser context (empty cache). The other client sends ``GET --request`` back to back over one
keep-alive connection; its baseline is the same loop, as many requests, with no page open.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path

import httpx
import timm
import torch

from bench.common import bench_root, local_stack, print_table
from cli import fashion_mnist
from nst.checkpoint import default_metadata, save_teacher

TOKEN = "bench-token"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ALL_PAINTED = """n => {
  const images = [...document.querySelectorAll('#browser .grid img')];
  return images.length === n && images.every(i => i.dataset.loaded === 'true');
}"""


def _prepare(root: Path, images: int) -> tuple[Path, Path]:
    pool = root / "pool"
    if not pool.exists():
        pixels, labels = fashion_mnist.load("train")
        fashion_mnist.write_unlabeled(pool, pixels, labels, range(images))
    metadata = default_metadata("resnet10t", fashion_mnist.CLASSES, channels=1, image_size=28, crop_pct=1.0)
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=len(fashion_mnist.CLASSES), in_chans=1)
    return pool, save_teacher(model.state_dict(), root / "teacher.safetensors", metadata)


class OtherClient:
    """Back-to-back requests on one connection, each one's latency recorded, until stopped."""

    def __init__(self, url: str, path: str):
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        self.path = path

    def one(self) -> float:
        start = time.perf_counter()
        self.http.get(self.path).raise_for_status()
        return time.perf_counter() - start

    def run(self, count: int) -> list[float]:
        return [self.one() for _ in range(count)]

    def during(self, action) -> tuple[list[float], object]:
        latencies: list[float] = []
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                latencies.append(self.one())

        thread = threading.Thread(target=loop)
        thread.start()
        try:
            result = action()
        finally:
            stop.set()
            thread.join()
        return latencies, result


def _load_page(browser, url: str, tiles: int) -> dict:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.add_init_script(f"sessionStorage.setItem('nst-token', '{TOKEN}')")
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        page.goto(url)
        page.wait_for_function(ALL_PAINTED, arg=tiles, timeout=120_000, polling=10)
        timing = page.evaluate(
            """() => ({
              fcp: performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? null,
              done: performance.now(),
            })"""
        )
    finally:
        context.close()
    if errors:
        raise RuntimeError(f"the page logged errors: {errors[:3]}")
    return timing


def _ms(seconds: list[float], q: float) -> float:
    """The q-quantile in milliseconds."""
    return 1000 * statistics.quantiles(seconds, n=100)[round(q * 100) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--tiles", type=int, default=200)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--request", default=None, help="the other client's path (default: /jobs/<id>)")
    parser.add_argument("--root", type=Path, default=None, help="kept when given")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    root = bench_root(args.root, "nst-ui-bench-")
    pool, teacher_file = _prepare(root, args.images)
    env = {"NST_DATA_DIR": str(root / "nst"), "NST_DATA_ROOTS": str(root), "NST_API_TOKEN": TOKEN}
    with local_stack(root, env, remove=args.root is None) as stack:
        stack.start_worker()
        client = stack.start_api()
        teacher = client.wait_for_teacher(client.upload_teacher(teacher_file)["id"], timeout=300)
        dataset = client.register_dataset(name="pool", kind="unlabeled", path=pool)
        job = client.create_job(teacher_id=teacher["id"], dataset_id=dataset["id"])
        assert client.wait_for_job(job["id"], timeout=600)["state"] == "succeeded", stack.logs()
        other = OtherClient(stack.url, args.request or f"/jobs/{job['id']}")
        other.run(20)  # warm: connection, statement caches

        page_url = f"{stack.url}/ui/jobs/{job['id']}?limit={args.tiles}"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            _load_page(browser, page_url, args.tiles)  # warm: the browser, the server's code paths
            loaded, timings = [], []
            for _ in range(args.loads):
                latencies, timing = other.during(lambda: _load_page(browser, page_url, args.tiles))
                loaded += latencies
                timings.append(timing)
            browser.close()
        bare = other.run(len(loaded))
        other.http.close()

    first_paint = statistics.median(t["fcp"] for t in timings)
    painted = statistics.median(t["done"] for t in timings)
    print(f"job page, {args.tiles} thumbnails, {args.loads} cold loads (median):")
    print(f"  first contentful paint {first_paint:.0f} ms, all thumbnails painted {painted:.0f} ms\n")
    print(f"other client: GET {other.path}, {len(loaded)} requests each way\n")
    rows = []
    for label, q in (("median", 0.5), ("p95", 0.95)):
        alone, during = _ms(bare, q), _ms(loaded, q)
        rows.append([label, f"{alone:.1f} ms", f"{during:.1f} ms", f"{during / alone:.2f}"])
    print_table(["latency", "no page open (baseline)", "while the page loads", "ratio"], rows)


if __name__ == "__main__":
    main()
