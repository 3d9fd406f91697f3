"""Every page in real headless Chromium against the real stack: it loads without console
errors, shows the API's numbers, filters as the API does, and shows nothing without the token.
Predicates are functions, not expressions: Playwright evaluates an expression with eval, which
the pages' Content-Security-Policy refuses (as it should)."""

from __future__ import annotations

import re

import pytest

from tests.ui.conftest import TOKEN

pytestmark = pytest.mark.slow

PAGES = ["/ui/", "/ui/generations", "/ui/jobs/{job}", "/ui/manifests/{manifest}"]


def _paths(world) -> list[str]:
    return [p.format(job=world.job["id"], manifest=world.manifest["id"]) for p in PAGES]


def _field(scope, name: str) -> str:
    return scope.locator(f'[data-field="{name}"]').first.inner_text()


def _tiles(page, key: str) -> list:
    """A data attribute of every tile in the grid, as numbers."""
    return page.locator("#browser .grid figure").evaluate_all(f"els => els.map(e => +e.dataset.{key})")


def _grid_ids(page) -> list[int]:
    return _tiles(page, "itemId")


def _loads(page, pages: str = "#browser") -> int:
    return int(page.locator(pages).get_attribute("data-loads") or 0)


def _change(page, selector: str, value: str, pages: str = "#browser") -> None:
    """Set a filter and wait for the page it shows in ``pages`` (the grid by default)."""
    before = _loads(page, pages)
    if page.locator(selector).evaluate("e => e.tagName") == "SELECT":
        page.select_option(selector, value)
    else:
        page.fill(selector, value)
        page.dispatch_event(selector, "change")
    page.wait_for_function(f"() => Number(document.querySelector('{pages}').dataset.loads) > {before}")


def _wait_for_grid(page) -> None:
    page.wait_for_function("() => Number(document.querySelector('#browser').dataset.loads) > 0")


def _wait_for_thumbnails(page) -> None:
    page.wait_for_function(
        "() => [...document.querySelectorAll('#browser .grid img')].every(i => i.dataset.loaded === 'true')"
    )


def test_the_token_prompt_guards_every_page(browser, world):
    context = browser.new_context()
    page = context.new_page()
    api_calls = []
    page.on("request", lambda r: api_calls.append(r.url) if "/ui/" not in r.url else None)
    for path in _paths(world):
        page.goto(world.url + path)
        assert page.locator("#token-prompt").is_visible(), path
        assert page.locator("#content").is_hidden(), path
        assert page.locator("#content table tbody tr, #browser figure").count() == 0, path
    assert api_calls == []  # nothing is asked of the API before there is a token

    page.fill("#token-input", "wrong")
    page.click("#token-form button")
    page.wait_for_selector("#token-error:not([hidden])")
    assert page.locator("#content").is_hidden() and "refused" in page.inner_text("#token-error")

    page.fill("#token-input", TOKEN)
    page.click("#token-form button")
    page.wait_for_selector("#content:not([hidden])")
    for path in _paths(world):  # kept for the tab: no prompt on the next page
        page.goto(world.url + path)
        page.wait_for_selector("#content:not([hidden])")
        assert page.locator("#token-prompt").is_hidden(), path
    context.close()


def test_overview_shows_what_the_api_lists(tab, world):
    tab.log_in("/ui/")
    page = tab.page
    page.wait_for_selector("#jobs tbody tr")
    for dataset in world.get("/datasets")["data"]:
        row = page.locator(f'#datasets tr[data-id="{dataset["id"]}"]')
        assert _field(row, "item_count") == f"{dataset['item_count']:,}"
        assert (_field(row, "kind"), _field(row, "split")) == (dataset["kind"], dataset["split"] or "–")
        classes = dataset["classes"]
        assert _field(row, "classes") == (str(len(classes)) if classes else "–")
    for teacher in world.get("/teachers")["data"]:
        row = page.locator(f'#teachers tr[data-id="{teacher["id"]}"]')
        assert _field(row, "status") == teacher["status"] == "ready"
        assert _field(row, "architecture") == teacher["architecture"]
        assert _field(row, "generation") == str(teacher["generation"])
        assert f"top1 {teacher['metrics']['top1']:.3f}" in _field(row, "metrics")
    jobs = world.get("/jobs")
    assert _field(page, "jobs-count") == str(jobs["count"])
    for job in jobs["data"]:
        row = page.locator(f'#jobs tr[data-id="{job["id"]}"]')
        assert _field(row, "state") == job["state"]
        assert _field(row, "items_done") == f"{job['items_done']:,}"
        assert _field(row, "items_total") == f"{job['items_total']:,}"
        assert _field(row, "items_failed") == str(job["items_failed"])
        assert _field(row, "throughput") == f"{job['throughput_items_per_s']:.1f} items/s"
        assert _field(row, "inference") == ", ".join(job["inference_used"]) == "openvino"  # the CPU's auto
    (worker,) = world.get("/workers")["data"]  # the stack's one worker, reporting itself
    row = page.locator(f'#workers tr[data-pid="{worker["pid"]}"]')
    assert (
        (_field(row, "state"), _field(row, "device"))
        == ("online", "cpu")
        == (worker["state"], worker["device"])
    )
    assert _field(row, "concurrency") == str(worker["concurrency"])
    software = worker["software"]  # what the real worker reported of itself
    assert (
        _field(row, "software")
        == f"nst {software['nst']} · torch {software['torch']} · openvino {software['openvino']}"
    )
    assert _field(page, "workers-online") == "1 of 1 online"
    assert page.locator("#software-differs").is_hidden()
    for manifest in world.get("/manifests")["data"]:
        row = page.locator(f'#manifests tr[data-id="{manifest["id"]}"]')
        assert _field(row, "entries") == f"{manifest['totals']['entries']:,}"
        assert _field(row, "samples") == f"{manifest['totals']['samples']:,}"
    tab.screenshot("overview")
    assert tab.errors == []


def test_the_overview_says_when_the_api_and_the_online_workers_run_different_software(tab, world):
    def two_torches(route) -> None:
        response = route.fetch()
        differs = {"torch": {"2.14.1": ["a@host"], "2.13.0": ["b@host", "c@host"]}}
        route.fulfill(response=response, json=response.json() | {"software_differs": differs})

    tab.page.route(f"{world.url}/workers", two_torches)
    tab.log_in("/ui/")
    tab.page.wait_for_selector("#software-differs:not([hidden])")
    assert tab.page.locator("#software-differs").text_content() == (
        "Different software online (the API and the workers): "
        "torch 2.14.1 on a@host; 2.13.0 on b@host, c@host"
    )
    assert tab.errors == []


def test_overview_follows_a_new_job_without_reloading(tab, world):
    tab.log_in("/ui/")
    page = tab.page
    page.wait_for_selector("#jobs tbody tr")
    page.evaluate("window.notReloaded = true")
    job = world.stack.client.create_job(
        teacher_id=world.student["id"], dataset_id=world.labeled["id"], shard_size=50, batch_size=16
    )
    row = f'#jobs tr[data-id="{job["id"]}"]'
    page.wait_for_selector(row, timeout=15_000)
    done = f"() => document.querySelector('{row} [data-field=state]').textContent === 'succeeded'"
    page.wait_for_function(done, timeout=60_000)
    finished = world.get(f"/jobs/{job['id']}")
    assert _field(page.locator(row), "items_done") == f"{finished['items_done']:,}" == "200"
    assert page.evaluate("window.notReloaded") is True
    assert tab.errors == []


def test_a_job_no_worker_has_touched_for_a_minute_says_it_waits_for_one(tab, world):
    """The API's ``waiting_for_worker`` (computed in tests/crud/test_job_progress.py) as the pages
    show it: the job's answers are changed on the way to read as ten minutes unattended."""
    job_id = world.job["id"]

    def unattended(route) -> None:
        response = route.fetch()
        body = response.json()
        for job in body.get("data", [body]):
            if job["id"] == job_id:
                job.update(state="queued", waiting_for_worker=True, worker_idle_s=600.0)
        route.fulfill(response=response, json=body)

    page = tab.page
    # The API's job list and this job, not the page /ui/jobs/<id> nor the job's other resources.
    page.route(re.compile(rf"^{re.escape(world.url)}/jobs(/{job_id})?(\?[^/]*)?$"), unattended)
    tab.log_in("/ui/")
    page.wait_for_selector("#jobs tbody tr")
    waiting = _field(page.locator(f'#jobs tr[data-id="{job_id}"]'), "waiting")
    assert waiting == "waiting for a worker 10 min (1 online)"  # the stack's worker, busy elsewhere
    assert page.locator('#jobs [data-field="waiting"]').count() == 1  # the other jobs are attended

    def none_online(route) -> None:
        response = route.fetch()
        body = response.json()
        for worker in body["data"]:
            worker.update(state="lost", silent_s=120.0)
        route.fulfill(response=response, json=body | {"online": 0})

    page.route(f"{world.url}/workers", none_online)
    tab.open(f"/ui/jobs/{job_id}")
    page.wait_for_selector('#job-progress [data-field="waiting"]')
    assert _field(page, "waiting") == "waiting for a worker 10 min (no worker online)"
    assert tab.errors == []


def test_a_jobs_shards_unfold_with_their_state_mode_and_worker(tab, world):
    job_id = world.job["id"]
    shards = world.get(f"/jobs/{job_id}/shards")["data"]
    (worker,) = world.get("/workers")["data"]
    page = tab.page
    # The job's own read is held until after the click: unfolding while the page still loads
    # must fill the table too.
    held = []
    page.route(f"{world.url}/jobs/{job_id}", lambda route: held.append(route))
    tab.log_in(f"/ui/jobs/{job_id}")
    while not held:
        page.wait_for_timeout(50)
    assert page.locator("#shards tbody tr").count() == 0  # read only once unfolded
    page.click("#shards summary")
    page.wait_for_selector("#shards tbody tr")
    held[0].continue_()
    assert page.locator("#shards tbody tr").count() == len(shards) == 3
    for shard in shards:
        row = page.locator(f'#shards tr[data-index="{shard["index"]}"]')
        assert (_field(row, "state"), _field(row, "items_done")) == ("succeeded", str(shard["items_done"]))
        assert _field(row, "inference") == "openvino" and shard["inference"] == ["openvino"]
        assert _field(row, "workers") == worker["name"] and shard["workers"] == [worker["name"]]
        assert _field(row, "attempts") == str(shard["attempts"]) and _field(row, "error") == ""
    assert page.inner_text("#shards .page-info") == "1–3 of 3"
    tab.screenshot("job-shards")

    def shown() -> list[int]:
        rows = page.locator("#shards tbody tr")
        return [int(i) for i in rows.evaluate_all("rows => rows.map(r => r.dataset.index)")]

    _change(page, "#shard-state", "failed", pages="#shards")
    assert shown() == [] and page.inner_text("#shards .page-info") == "none of 0"
    _change(page, "#shard-state", "succeeded", pages="#shards")
    assert shown() == [0, 1, 2]
    # Two shards a page, from the real API: the pager walks its cursor.
    page.route(
        f"{world.url}/jobs/{job_id}/shards?*",
        lambda route: route.continue_(url=route.request.url.replace("limit=100", "limit=2")),
    )
    _change(page, "#shard-state", "", pages="#shards")
    assert shown() == [0, 1] and page.locator("#shards .previous").is_disabled()
    before = _loads(page, "#shards")
    page.click("#shards .next")
    page.wait_for_function(f"() => Number(document.querySelector('#shards').dataset.loads) > {before}")
    assert shown() == [2] and page.locator("#shards .next").is_disabled()
    assert tab.errors == []


def test_a_job_that_could_not_label_some_images_lists_them_and_why(tab, world):
    job_id = world.broken_job["id"]
    (error,) = world.get(f"/jobs/{job_id}/errors")["data"]
    tab.log_in(f"/ui/jobs/{job_id}")
    page = tab.page
    page.wait_for_selector("#item-errors:not([hidden])")
    assert _field(page.locator("#item-errors"), "errors-count") == "1"
    page.click("#item-errors summary")
    page.wait_for_selector("#item-errors tbody tr")
    row = page.locator(f'#item-errors tr[data-item-id="{error["item_id"]}"]')
    assert (_field(row, "uri"), _field(row, "message")) == (error["uri"], error["message"])
    assert error["uri"].endswith("truncated.png")
    assert page.locator("#item-errors .page-info").text_content() == "1–1 of 1"
    tab.screenshot("job-item-errors")

    tab.open(f"/ui/jobs/{world.job['id']}")  # a job that labeled every image: nothing to unfold
    page.wait_for_selector('#job-progress [data-field="state"]')
    assert page.locator("#item-errors").is_hidden()
    assert tab.errors == []


def _browse(world, job_id: int, **params) -> dict:
    return world.get(f"/jobs/{job_id}/labels/browse", **{"limit": 100, **params})


def test_job_page_grid_and_filters_match_the_api(tab, world):
    probe = world.probe["id"]
    tab.log_in(f"/ui/jobs/{probe}")
    page = tab.page
    _wait_for_grid(page)
    expected = _browse(world, probe)
    assert _grid_ids(page) == [t["item_id"] for t in expected["data"]]
    assert page.locator("#browser .page-info").get_attribute("data-count") == str(expected["count"]) == "200"
    modes = ", ".join(world.get(f"/jobs/{probe}")["inference_used"])
    assert _field(page.locator("#job-progress"), "inference") == modes == "openvino"
    wrong = {t["item_id"] for t in expected["data"] if t["correct"] is False}
    assert wrong, "a tiny teacher gets some of its own training set wrong"
    shown_wrong = page.locator("#browser figure.wrong").evaluate_all("els => els.map(e => +e.dataset.itemId)")
    assert set(shown_wrong) == wrong
    _wait_for_thumbnails(page)
    tab.screenshot("job-labels")

    # The class the teacher predicts most, and the middle half of its confidences.
    stats = world.get(f"/jobs/{probe}/stats", threshold=0.3)
    name, chosen = max(stats["classes"].items(), key=lambda kv: kv[1]["pseudo_labeled"])
    index = chosen["index"]
    _change(page, "#class-filter", str(index))
    expected = _browse(world, probe, class_index=index)
    assert _grid_ids(page) == [t["item_id"] for t in expected["data"]]
    assert set(_tiles(page, "classIndex")) == {index}
    confidences = sorted(t["confidence"] for t in expected["data"])
    low, high = (round(confidences[len(confidences) * q // 4], 2) for q in (1, 3))

    _change(page, "#min-confidence", str(low))
    _change(page, "#max-confidence", str(high))
    _change(page, "#order", "confidence_asc")
    ranged = {"class_index": index, "min_confidence": low, "max_confidence": high, "order": "confidence_asc"}
    expected = _browse(world, probe, **ranged)
    assert 0 < expected["count"] < chosen["pseudo_labeled"]
    assert _grid_ids(page) == [t["item_id"] for t in expected["data"]]
    shown = _tiles(page, "confidence")
    assert shown == sorted(shown) and all(low <= c <= high for c in shown)

    _change(page, "#correct-filter", "false")
    expected = _browse(world, probe, **ranged, correct="false")
    assert _grid_ids(page) == [t["item_id"] for t in expected["data"]]
    assert page.locator("#browser figure:not(.wrong)").count() == 0

    assert page.inner_text("#histogram-class") == name
    assert _field(page, "pseudo_labeled") == str(chosen["pseudo_labeled"])
    assert _field(page, "above_threshold") == str(chosen["above_threshold"])
    bars = page.locator("#histogram rect.bar").count()
    assert bars == sum(1 for n in chosen["histogram"] if n is not None)
    assert tab.errors == []


def test_a_tile_shows_the_teachers_top_k_and_entropy(tab, world):
    job = world.job["id"]
    tab.log_in(f"/ui/jobs/{job}")
    page = tab.page
    _wait_for_grid(page)
    first = _browse(world, job, limit=1)["data"][0]
    tile = page.locator("#browser figure").first
    assert tile.locator(".detail").is_hidden()
    tile.hover()
    detail = tile.locator(".detail")
    assert detail.is_visible()
    names = world.teacher["class_names"]
    rows = detail.locator("tr").evaluate_all("rs => rs.map(r => [...r.cells].map(c => c.textContent))")
    assert rows == [[names[p["index"]], f"{p['probability']:.3f}"] for p in first["top"]]
    assert f"entropy {first['entropy']:.3f} nats" in detail.inner_text()
    tile.click()
    assert f"Item {first['item_id']}" in page.inner_text("#pinned")


def test_the_next_page_follows_the_cursor(tab, world):
    job = world.job["id"]
    tab.log_in(f"/ui/jobs/{job}?limit=50&order=item")
    page = tab.page
    _wait_for_grid(page)
    first = _browse(world, job, limit=50, order="item")
    assert _grid_ids(page) == [t["item_id"] for t in first["data"]]
    before = _loads(page)
    page.click("#browser .next")
    page.wait_for_function(f"() => Number(document.querySelector('#browser').dataset.loads) > {before}")
    second = world.get(f"/jobs/{job}/labels/browse", limit=50, order="item", cursor=first["next_cursor"])
    assert _grid_ids(page) == [t["item_id"] for t in second["data"]]
    assert page.inner_text("#browser .page-info") == "51–100 of 300"


def test_manifest_page_shows_its_counts_and_entries(tab, world):
    manifest = world.get(f"/manifests/{world.manifest['id']}")
    tab.log_in(f"/ui/manifests/{manifest['id']}")
    page = tab.page
    _wait_for_grid(page)
    for name, counts in manifest["class_counts"].items():
        row = page.locator(f'#class-counts tr[data-class="{name}"]')
        for key in ("labeled", "pseudo_unique", "pseudo_with_copies"):
            assert _field(row, key) == f"{counts[key]:,}", (name, key)
    assert _field(page, "total-entries") == f"{manifest['totals']['entries']:,} entries"
    assert _field(page, "param-threshold") == "0.3"
    assert f"job {world.job['id']}" in page.inner_text("#provenance")
    expected = world.get(f"/manifests/{manifest['id']}/entries/browse", limit=100)
    assert _grid_ids(page) == [t["item_id"] for t in expected["data"]]
    count = page.locator("#browser .page-info").get_attribute("data-count")
    assert count == str(manifest["totals"]["entries"])
    _change(page, "#source-filter", "labeled")
    expected = world.get(f"/manifests/{manifest['id']}/entries/browse", limit=100, source="labeled")
    assert _grid_ids(page) == [t["item_id"] for t in expected["data"]]
    assert expected["count"] == manifest["totals"]["labeled"]
    _wait_for_thumbnails(page)
    tab.screenshot("manifest")
    assert tab.errors == []


def test_generations_page_shows_lineage_and_the_flips(tab, world):
    tab.log_in("/ui/generations")
    page = tab.page
    _wait_for_grid(page)
    student = page.locator(f'#lineage tr[data-id="{world.student["id"]}"]')
    assert _field(student, "generation") == "1"
    assert _field(student, "top1") == f"{100 * world.student['metrics']['top1']:.1f}%"
    assert page.locator("#accuracy-chart rect.bar").count() == 2
    # By default: the newest pair of a teacher's job and its student's job over one dataset.
    a, b = (world.get(f"/jobs/{page.input_value(s)}") for s in ("#job-a", "#job-b"))
    assert a["dataset_id"] == b["dataset_id"]
    assert world.get(f"/teachers/{b['teacher_id']}")["parent_id"] == a["teacher_id"]

    tab.open(f"/ui/generations?a={world.job['id']}&b={world.student_job['id']}")
    page.wait_for_selector("#content:not([hidden])")
    _wait_for_grid(page)
    comparison = world.get(f"/jobs/{world.job['id']}/compare/{world.student_job['id']}")
    assert comparison["flipped"] > 0
    assert _field(page, "flipped") == f"{comparison['flipped']:,}"
    assert _field(page, "compared") == f"{comparison['compared']:,}" == "300"
    counts = page.locator('#changes [data-field="change-count"]').all_inner_texts()
    assert counts == [str(c["count"]) for c in comparison["changes"]]
    assert len(_grid_ids(page)) == min(100, comparison["flipped"])
    _wait_for_thumbnails(page)
    tab.screenshot("generations")

    top = comparison["changes"][0]
    before = _loads(page)
    page.locator('#changes [data-field="change-count"]').first.click()
    page.wait_for_function(f"() => Number(document.querySelector('#browser').dataset.loads) > {before}")
    assert len(_grid_ids(page)) == top["count"]
    assert set(_tiles(page, "classIndex")) == {top["to_class"]}
    assert tab.errors == []


def test_the_api_docs_render_from_local_files_under_the_content_security_policy(tab, world):
    """Swagger UI from the fastapi-offline package: no CDN, and nothing the policy blocks."""
    outside = []
    tab.page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(world.url) else None)
    tab.open("/docs")
    tab.page.wait_for_selector(".opblock")
    assert tab.page.locator(".opblock").count() >= 20  # every operation of the API
    assert outside == [] and tab.errors == []
