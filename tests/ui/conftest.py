"""A real stack (uvicorn API + Celery worker, embedded defaults, a token) with real labeling jobs
over Fashion-MNIST, and headless Chromium (Debian's package) driven by Playwright."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from cli.fashion_mnist import CLASSES
from tests.utils.stack import Stack
from tests.utils.teacher import direct_probs, metadata, train_tiny_teacher

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "ui-test-token"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"


def _top1(teacher_file: Path, folder: Path) -> float:
    probs = direct_probs(teacher_file, folder)
    right = [int(p.argmax()) == CLASSES.index(Path(uri).parent.name) for uri, p in probs.items()]
    return sum(right) / len(right)


class World:
    """What the stack holds, by role, and an HTTP client that reads it as the UI does."""

    def __init__(self, stack: Stack):
        self.url = stack.url
        self.api = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)

    def get(self, path: str, **params) -> dict:
        response = self.api.get(path, params=params)
        response.raise_for_status()
        return response.json()


@pytest.fixture(scope="session")
def world(tmp_path_factory, fmnist, teacher_file):
    """Teacher 0 labels the pool and, as a probe, the labeled set; a manifest joins the labeled
    set and the pool's labels; its student (teacher 1) labels the pool again."""
    tmp = tmp_path_factory.mktemp("ui-stack")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NST_")}
    # Two images and a file that is not one: a job that cannot label everything.
    broken = tmp / "broken"
    broken.mkdir()
    for image in sorted((fmnist / "unlabeled").rglob("*.png"))[:2]:
        shutil.copy(image, broken / image.name)
    (broken / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n and nothing after")
    roots = f"{fmnist.parent},{broken}"
    env |= {"NST_DATA_DIR": str(tmp / "nst"), "NST_DATA_ROOTS": roots, "NST_API_TOKEN": TOKEN}
    stack = Stack(tmp / "logs")
    stack.env = env | {"PYTHONUNBUFFERED": "1"}
    stack.client.close()
    from nst.client import Client

    stack.client = Client(stack.url, token=TOKEN, timeout=60)
    stack.start_worker()  # boots (imports torch) while the student trains below
    stack.start_api()
    try:
        student_file = train_tiny_teacher(fmnist / "labeled", tmp / "student.safetensors", steps=60)
        client = stack.client
        labeled = client.register_dataset(
            name="fmnist-labeled", kind="labeled", split="train", path=fmnist / "labeled", classes=CLASSES
        )
        pool = client.register_dataset(name="fmnist-pool", kind="unlabeled", path=fmnist / "unlabeled")
        gen0 = metadata(name="teacher-gen0", metrics={"top1": _top1(teacher_file, fmnist / "test")})
        teacher = client.wait_for_teacher(client.upload_teacher(teacher_file, gen0)["id"], timeout=120)
        job = client.create_job(teacher_id=teacher["id"], dataset_id=pool["id"], shard_size=100)
        probe = client.create_job(teacher_id=teacher["id"], dataset_id=labeled["id"], shard_size=100)
        for pending in (job, probe):
            assert client.wait_for_job(pending["id"], timeout=300)["state"] == "succeeded", stack.logs()
        manifest = client.create_manifest(
            labeled_dataset_ids=[labeled["id"]], job_ids=[job["id"]], threshold=0.3
        )
        gen1 = metadata(
            name="student-gen1",
            parent_id=teacher["id"],
            manifest_id=manifest["id"],
            generation=1,
            metrics={"top1": _top1(student_file, fmnist / "test")},
        )
        student = client.wait_for_teacher(client.upload_teacher(student_file, gen1)["id"], timeout=120)
        student_job = client.create_job(teacher_id=student["id"], dataset_id=pool["id"], shard_size=100)
        assert client.wait_for_job(student_job["id"], timeout=300)["state"] == "succeeded", stack.logs()
        odd = client.register_dataset(name="broken", kind="unlabeled", path=broken)
        broken_job = client.create_job(teacher_id=teacher["id"], dataset_id=odd["id"])
        broken_job = client.wait_for_job(broken_job["id"], timeout=120)
        assert (broken_job["items_done"], broken_job["items_failed"]) == (2, 1), stack.logs()
        world = World(stack)
        world.stack, world.labeled, world.pool = stack, labeled, pool
        world.teacher, world.student, world.manifest = teacher, student, manifest
        world.job, world.probe, world.student_job, world.broken_job = job, probe, student_job, broken_job
        yield world
        world.api.close()
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def browser(world):  # closes first, so that no keep-alive connection holds the API's shutdown
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup.sh installs Debian's chromium package")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Page:
    """A tab that records console errors and failed page scripts."""

    def __init__(self, page, base_url: str):
        self.page, self.base_url, self.errors = page, base_url, []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.set_default_timeout(20_000)

    def open(self, path: str) -> None:
        self.page.goto(self.base_url + path)

    def log_in(self, path: str, token: str = TOKEN) -> None:
        self.open(path)
        self.page.fill("#token-input", token)
        self.page.click("#token-form button")
        self.page.wait_for_selector("#content:not([hidden])")

    def screenshot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)


@pytest.fixture
def tab(browser, world):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = Page(context.new_page(), world.url)
    yield page
    context.close()
