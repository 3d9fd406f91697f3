import json
import os
from pathlib import Path

import pytest

from cli.fashion_mnist import CLASSES


def _roots() -> list[Path]:
    return [Path(p) for p in os.environ["NST_DATA_ROOTS"].split(",")]


def _register(client, **body):
    body.setdefault("name", "ds")
    return client.post("/datasets", json=body)


def _count_datasets(client) -> int:
    return client.get("/datasets").json()["count"]


@pytest.mark.usefixtures("backend")  # items are copied in by the driver: COPY on PostgreSQL
def test_register_image_folder_counts_every_class(client, fmnist):
    response = _register(client, kind="labeled", split="train", path=str(fmnist / "labeled"))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["classes"] == sorted(CLASSES)
    assert body["item_count"] == 200
    assert body["class_counts"] == {name: 20 for name in sorted(CLASSES)}
    again = client.get(f"/datasets/{body['id']}").json()
    assert again["class_counts"] == body["class_counts"]


def test_register_keeps_the_given_class_order(client, fmnist):
    response = _register(client, kind="labeled", split="train", path=str(fmnist / "labeled"), classes=CLASSES)
    assert response.status_code == 201, response.text
    assert response.json()["classes"] == CLASSES
    items = client.get(f"/datasets/{response.json()['id']}/items", params={"limit": 500}).json()
    assert all(Path(i["uri"]).parent.name == CLASSES[i["label"]] for i in items["data"])


@pytest.mark.usefixtures("backend")
def test_register_unlabeled_tree_gives_stable_ordered_items(client, fmnist):
    body = _register(client, kind="unlabeled", path=str(fmnist / "unlabeled")).json()
    assert body["item_count"] == 300 and body["classes"] is None
    page1 = client.get(f"/datasets/{body['id']}/items", params={"limit": 100}).json()
    page2 = client.get(
        f"/datasets/{body['id']}/items", params={"limit": 100, "cursor": page1["next_cursor"]}
    ).json()
    ordinals = [i["ordinal"] for i in page1["data"] + page2["data"]]
    assert ordinals == list(range(200))
    uris = [i["uri"] for i in page1["data"]]
    assert uris == sorted(uris)


@pytest.mark.usefixtures("backend")
def test_a_tree_with_links_registers_each_real_image_once_in_path_order(client, fmnist):
    """Items in pathlib's order of the tree as walked (by parts); a link's item is the image it
    leads to, in the link's place."""
    png = next((fmnist / "unlabeled").rglob("*.png")).read_bytes()
    tree = _roots()[0] / "linked"
    for folder in ("b", "b-c", "real"):  # "b-c" sorts before "b/" as text, after "b" by parts
        (tree / folder).mkdir(parents=True)
    for name in ("b/z.png", "b-c/a.png", "real/m.png", "real/readme.txt"):
        (tree / name).write_bytes(png)
    elsewhere = _roots()[0] / "elsewhere.png"  # outside the tree, inside the roots: the item is it
    elsewhere.write_bytes(png)
    (tree / "b" / "zz-link.png").symlink_to(elsewhere)
    (tree / "b-c" / "loop").symlink_to(tree, target_is_directory=True)  # followed once, not forever
    body = _register(client, kind="unlabeled", path=str(tree)).json()
    items = client.get(f"/datasets/{body['id']}/items").json()["data"]
    expected = [tree / "b" / "z.png", elsewhere, tree / "b-c" / "a.png", tree / "real" / "m.png"]
    assert [i["uri"] for i in items] == [str(p) for p in expected]
    assert [i["ordinal"] for i in items] == [0, 1, 2, 3]


@pytest.mark.parametrize("name", ["a.png", "..png", ".png", "a.", "a", "a.b.PNG", ".a.jpg", "...", "x.."])
def test_a_file_is_an_image_by_pathlibs_suffix(name):
    from service.scan import _suffix

    assert _suffix(name) == Path(name).suffix


@pytest.mark.usefixtures("backend")
def test_register_csv_and_jsonl_lists(client, fmnist, tmp_path):
    root = _roots()[0]
    pngs = sorted((fmnist / "labeled").rglob("*.png"))[:30]
    csv_path = root / "list.csv"
    csv_path.write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in pngs))
    body = _register(client, kind="labeled", split="val", path=str(csv_path)).json()
    assert body["item_count"] == 30 and body["source_format"] == "csv"
    jsonl = root / "list.jsonl"
    jsonl.write_text("".join(f'{{"path": "{p}"}}\n' for p in pngs))
    body = _register(client, kind="unlabeled", path=str(jsonl)).json()
    assert body["item_count"] == 30 and body["source_format"] == "jsonl"
    # A pool's list may carry labels of any kind: they are not read. A labeled list's integer
    # labels are class names.
    junk = [{"x": 1}, True, "", 0.5, "a\u0001b"]
    jsonl.write_text(
        "".join(json.dumps({"path": str(p), "label": junk[i % 5]}) + "\n" for i, p in enumerate(pngs))
    )
    assert _register(client, kind="unlabeled", path=str(jsonl)).json()["item_count"] == 30
    jsonl.write_text("".join(json.dumps({"path": str(p), "label": i % 2}) + "\n" for i, p in enumerate(pngs)))
    body = _register(client, kind="labeled", split="val", path=str(jsonl)).json()
    assert body["item_count"] == 30 and body["classes"] == ["0", "1"]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("outside", "outside the data roots"),
        ("dotdot", "outside the data roots"),
        ("symlink_out", "symlink that leads outside"),
        ("missing", "does not exist"),
        ("empty", "no class sub-folders"),
        ("empty_unlabeled", "holds no image files"),
        ("unknown_class", "unknown class 'zebra'"),
        ("missing_file_in_list", "line 2: file"),
        ("unreadable_list", "unreadable"),
        ("bad_jsonl", "line 1: expected a JSON object"),
        ("not_a_list", "is a file but not a list"),
        ("classes_mismatch", "do not match the sub-folders"),
        # One image is one item: named twice, it would be labeled twice (or with two classes).
        ("same_file_twice_in_list", "line 2: file"),
        ("same_image_in_two_classes", "are the same image"),
        ("same_image_twice_unlabeled", "are the same image"),
        # A link met before its image (later in its folder, or in a class folder walked later).
        ("link_before_its_image", "are the same image"),
        ("link_before_its_class_folder", "are the same image"),
        ("two_links_to_one_image", "are the same image"),
        # Found after images were inserted: the whole registration is undone.
        ("symlink_out_after_images", "symlink that leads outside"),
        # A class name is a string or an integer, never JSON's other values or control characters.
        ("label_object", "line 1: label {'x': [1]} is not a class name"),
        ("label_bool", "line 1: label True is not a class name"),
        ("label_empty", "line 1: a labeled list needs a label"),
        ("label_control_jsonl", "line 1: label holds a control character"),
        ("label_control_csv", "line 1: label holds a control character"),
    ],
)
def test_bad_dataset_paths_get_422_and_register_nothing(client, fmnist, tmp_path, case, expected):
    root = _roots()[0]
    png = next((fmnist / "labeled").rglob("*.png"))
    body = {"kind": "labeled", "split": "train"}
    if case == "outside":
        body["path"] = str(tmp_path)
    elif case == "dotdot":
        body["path"] = str(root / ".." / "..")
    elif case == "symlink_out":
        tree = root / "tree" / "cls"
        tree.mkdir(parents=True)
        (tree / "a.png").symlink_to(tmp_path.parent / "elsewhere.png")
        (tmp_path.parent / "elsewhere.png").write_bytes(png.read_bytes())
        body["path"] = str(root / "tree")
    elif case == "missing":
        body["path"] = str(root / "nope")
    elif case == "empty":
        (root / "empty").mkdir()
        body["path"] = str(root / "empty")
    elif case == "empty_unlabeled":
        (root / "empty2").mkdir()
        body = {"kind": "unlabeled", "path": str(root / "empty2")}
    elif case == "unknown_class":
        (root / "l.csv").write_text(f"{png},zebra\n")
        body["path"], body["classes"] = str(root / "l.csv"), CLASSES
    elif case == "missing_file_in_list":
        (root / "l.csv").write_text(f"{png},coat\n{root / 'gone.png'},coat\n")
        body["path"] = str(root / "l.csv")
    elif case == "unreadable_list":
        (root / "l.csv").write_bytes(b"\xff\xfe\x00bad")
        body["path"] = str(root / "l.csv")
    elif case == "bad_jsonl":
        (root / "l.jsonl").write_text("[1, 2]\n")
        body["path"] = str(root / "l.jsonl")
    elif case == "not_a_list":
        body["path"] = str(png)
    elif case == "classes_mismatch":
        body["path"], body["classes"] = str(fmnist / "labeled"), ["a", "b"]
    elif case == "same_file_twice_in_list":
        (root / "sub").mkdir()
        (root / "sub" / "l.csv").write_text(f"{png},coat\n{os.path.relpath(png, root / 'sub')},dress\n")
        body["path"] = str(root / "sub" / "l.csv")
    elif case == "same_image_in_two_classes":
        for name in ("a", "b"):
            (root / "two" / name).mkdir(parents=True)
        (root / "two" / "a" / "x.png").write_bytes(png.read_bytes())
        (root / "two" / "b" / "y.png").symlink_to(root / "two" / "a" / "x.png")
        body["path"] = str(root / "two")
    elif case == "same_image_twice_unlabeled":
        (root / "pool").mkdir()
        (root / "pool" / "x.png").write_bytes(png.read_bytes())
        (root / "pool" / "y.png").symlink_to(root / "pool" / "x.png")
        body = {"kind": "unlabeled", "path": str(root / "pool")}
    elif case == "link_before_its_image":
        (root / "pool").mkdir()
        (root / "pool" / "z.png").write_bytes(png.read_bytes())
        (root / "pool" / "a.png").symlink_to(root / "pool" / "z.png")
        body = {"kind": "unlabeled", "path": str(root / "pool")}
    elif case == "link_before_its_class_folder":
        for name in ("a", "b"):
            (root / "two" / name).mkdir(parents=True)
        (root / "two" / "b" / "x.png").write_bytes(png.read_bytes())
        (root / "two" / "a" / "y.png").symlink_to(root / "two" / "b" / "x.png")
        body["path"] = str(root / "two")
    elif case == "two_links_to_one_image":
        (root / "pool").mkdir()
        (root / "elsewhere.png").write_bytes(png.read_bytes())
        for name in ("a.png", "b.png"):
            (root / "pool" / name).symlink_to(root / "elsewhere.png")
        body = {"kind": "unlabeled", "path": str(root / "pool")}
    elif case == "symlink_out_after_images":
        (root / "pool").mkdir()
        for i in range(20):
            (root / "pool" / f"{i:02d}.png").write_bytes(png.read_bytes())
        (root / "pool" / "zz.png").symlink_to(tmp_path.parent / "elsewhere.png")
        (tmp_path.parent / "elsewhere.png").write_bytes(png.read_bytes())
        body = {"kind": "unlabeled", "path": str(root / "pool")}
    elif case.startswith("label_") and case != "label_control_csv":
        label = {"label_object": {"x": [1]}, "label_bool": True, "label_empty": " "}.get(case, "a\u0001b")
        (root / "l.jsonl").write_text(json.dumps({"path": str(png), "label": label}) + "\n")
        body["path"] = str(root / "l.jsonl")
    elif case == "label_control_csv":
        (root / "l.csv").write_text(f"{png},a\x01b\n")
        body["path"] = str(root / "l.csv")
    response = _register(client, **body)
    assert response.status_code == 422, response.text
    assert expected in response.json()["detail"]
    assert response.json()["detail"].startswith("path:")
    assert _count_datasets(client) == 0


def test_request_field_errors_name_the_field(client, fmnist):
    response = _register(client, kind="labeled", path=str(fmnist / "labeled"))
    assert response.status_code == 422
    assert "split" in str(response.json()["detail"])
    response = _register(client, kind="sideways", path=str(fmnist / "labeled"))
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "kind"]


def test_delete_dataset_and_unknown_ids(client, fmnist):
    body = _register(client, kind="unlabeled", path=str(fmnist / "unlabeled")).json()
    assert client.delete(f"/datasets/{body['id']}").status_code == 204
    assert client.get(f"/datasets/{body['id']}").status_code == 404
    assert client.delete(f"/datasets/{body['id']}").status_code == 404


def test_on_sqlite_a_folder_is_walked_before_the_databases_writer_is_taken(client, fmnist, monkeypatch):
    """SQLite has one writer, which every worker's commit waits for: a registration holds it
    for its insert only, not for its walk (minutes, on a cold network share)."""
    import sqlite3
    from dataclasses import replace

    from nst.config import get_settings
    from service.api.routes import datasets as route

    database = get_settings().database_url.removeprefix("sqlite:///")
    held: list[bool] = []

    def writer_held() -> bool:
        other = sqlite3.connect(database, timeout=0)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.rollback()
            return False
        except sqlite3.OperationalError:  # database is locked
            return True
        finally:
            other.close()

    def watched(rows):
        for row in rows:
            held.append(writer_held())
            yield row

    scan = route.scan
    monkeypatch.setattr(
        route, "scan", lambda *a, **k: replace(result := scan(*a, **k), rows=watched(result.rows))
    )
    body = _register(client, kind="unlabeled", path=str(fmnist / "unlabeled")).json()
    assert body["item_count"] == len(held) == 300 and not any(held)


def test_a_spool_gives_back_its_rows_as_they_were():
    from service.crud.datasets import _spooled
    from service.scan import ScanError

    odd = ["/data/a b.png", "/data/tab\there.png", "/data/new\nline.png", "/data/ünï.png", "s3://b/k%20.png"]
    rows = [(f"{odd[i % 5]}-{i:07d}-" + "x" * (i % 300), None if i % 3 else i % 7) for i in range(20_000)]
    assert list(_spooled(iter(rows))) == rows  # more than one 1 MiB chunk, fields split across them
    assert list(_spooled([])) == []
    with pytest.raises(ScanError, match="NUL"):
        _spooled([("/data/a\0b.png", None)])


@pytest.mark.parametrize("count", [0, 1, 5, 255, 256, 257, 511, 512, 513, 1000, 4097, 100_000])
def test_an_even_sample_spreads_over_rows_of_any_count_keeping_little(count):
    from service.pixel_stats import EvenSample

    sample = EvenSample(size=256)
    most = 0
    for _ in sample.watch((str(i), None) for i in range(count)):
        most = max(most, len(sample._kept))
    chosen = [int(uri) for uri in sample.uris]
    assert most <= 2 * 256
    if count <= 256:
        assert chosen == list(range(count))  # every row
        return
    steps = {b - a for a, b in zip(chosen, chosen[1:], strict=False)}
    assert len(steps) == 1 and chosen[0] == 0  # evenly spaced from the first row
    assert 128 <= len(chosen) <= 256 and count - chosen[-1] <= 2 * steps.pop()  # over all the rows


def test_registration_measures_the_pixel_mean_and_std(client, fmnist):
    """Measured once on an even sample, so a student is normalised by its own data."""
    import numpy as np
    from PIL import Image

    body = _register(client, kind="labeled", split="train", path=str(fmnist / "labeled")).json()
    stats = body["pixel_stats"]
    assert stats["sample"] == 200 and len(stats["RGB"]["mean"]) == 3
    items = client.get(f"/datasets/{body['id']}/items", params={"limit": 500}).json()["data"]
    pixels = np.concatenate([np.asarray(Image.open(i["uri"]), dtype=np.float64).ravel() / 255 for i in items])
    assert stats["L"]["mean"][0] == pytest.approx(pixels.mean(), abs=1e-4)
    assert stats["L"]["std"][0] == pytest.approx(pixels.std(), abs=1e-4)
    assert stats["RGB"]["mean"] == pytest.approx(stats["L"]["mean"] * 3, abs=1e-4)  # gray images

    root = _roots()[0]
    blank = root / "blank"
    blank.mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(blank / "red.png")
    (blank / "broken.png").write_bytes(b"not an image")
    red = _register(client, kind="unlabeled", path=str(blank)).json()["pixel_stats"]
    assert red["sample"] == 1 and red["RGB"]["mean"] == [1.0, 0.0, 0.0]
    assert red["RGB"]["std"] == [0.001, 0.001, 0.001]  # floored: a usable divisor
