import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from tests.utils import factories


@pytest.fixture
def items(client, fmnist):
    dataset = factories.unlabeled_dataset(client, fmnist / "unlabeled")
    return client.get(f"/datasets/{dataset['id']}/items", params={"limit": 20}).json()["data"]


@pytest.mark.parametrize("size", [64, 128, 256])
def test_thumbnail_is_a_jpeg_fitted_to_the_size_with_cache_headers(client, items, size):
    response = client.get(f"/items/{items[0]['id']}/thumbnail", params={"size": size})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    assert "max-age" in response.headers["cache-control"] and response.headers["etag"]
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "JPEG" and image.size == (size, size)  # 28 x 28 is square


def test_thumbnail_shows_the_items_own_image(client, items):
    original = np.asarray(Image.open(items[3]["uri"]).convert("L"), dtype=np.float32)
    response = client.get(f"/items/{items[3]['id']}/thumbnail", params={"size": 64})
    thumbnail = Image.open(io.BytesIO(response.content)).convert("L").resize((28, 28))
    assert np.abs(np.asarray(thumbnail, dtype=np.float32) - original).mean() < 12  # JPEG noise only


def test_a_current_copy_is_304(client, items):
    url = f"/items/{items[0]['id']}/thumbnail"
    etag = client.get(url).headers["etag"]
    again = client.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    other_size = client.get(url, params={"size": 64}, headers={"If-None-Match": etag})
    assert other_size.status_code == 200


def test_unknown_item_is_404_and_a_size_not_offered_422(client, items):
    assert client.get("/items/999999/thumbnail").status_code == 404
    for size in (0, 100, 4096):
        response = client.get(f"/items/{items[0]['id']}/thumbnail", params={"size": size})
        assert response.status_code == 422 and response.json()["detail"].startswith("size:")
    assert client.get(f"/items/{items[0]['id']}/thumbnail", params={"size": "big"}).status_code == 422


def test_a_file_that_left_the_data_roots_is_refused(client, items, monkeypatch, tmp_path):
    from tests.utils.env import clear_caches

    monkeypatch.setenv("NST_DATA_ROOTS", str(tmp_path))
    clear_caches()
    response = client.get(f"/items/{items[0]['id']}/thumbnail")
    assert response.status_code == 403 and "outside the data roots" in response.json()["detail"]


def test_an_image_over_pillows_pixel_limit_is_415_like_any_undecodable_file(client, items, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 28 * 28 // 4)  # over twice the limit: an error
    response = client.get(f"/items/{items[0]['id']}/thumbnail")
    assert response.status_code == 415 and "decompression bomb" in response.json()["detail"], response.text


def test_a_grid_of_thumbnails_at_once(client, items):
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda item: client.get(f"/items/{item['id']}/thumbnail"), items * 5))
    assert all(r.status_code == 200 for r in responses)


def test_openapi_documents_the_sizes(client):
    schema = client.get("/openapi.json").json()
    size = next(
        p for p in schema["paths"]["/items/{item_id}/thumbnail"]["get"]["parameters"] if p["name"] == "size"
    )
    assert size["schema"]["enum"] == [64, 128, 256]
