"""Filtering and balancing (docs/METHOD.md steps 3-4) against hand-checked cases, a reference
implementation, and across SQLite and PostgreSQL."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text

from service.core.db import session_scope
from service.crud import label_bins
from service.exports.manifests import records
from service.manifests import reads, selection
from service.manifests.build import build_manifest, prepare_manifest
from service.manifests.validation import ManifestRequestError
from service.models import Manifest, ManifestClass, ManifestEntry
from service.schemas import ManifestCreate
from tests.utils import synthetic
from tests.utils.env import clear_caches

CLASSES = ["cat", "dog", "eel"]
CAT, DOG, EEL = range(3)


@pytest.fixture
def db(backend):
    synthetic.migrate()
    return backend


@pytest.fixture
def teacher(db):
    return synthetic.teacher(CLASSES)


def build(**request) -> int:
    """The new manifest's key, once its recorded counts are checked against its entries."""
    with session_scope() as session:
        prepared = prepare_manifest(session, request=ManifestCreate(**request))
        manifest_key = build_manifest(session, prepared=prepared).key
    assert recorded_counts(manifest_key) == counted_entries(manifest_key)
    return manifest_key


def recorded_counts(manifest_key: int) -> dict[int, tuple[int, int, int]]:
    """class -> (labeled, pseudo unique, pseudo with copies), as the build recorded them."""
    with session_scope() as session:
        rows = session.scalars(select(ManifestClass).where(ManifestClass.manifest_key == manifest_key))
        return {r.class_index: (r.labeled, r.pseudo_unique, r.pseudo_with_copies) for r in rows}


def counted_entries(manifest_key: int) -> dict[int, tuple[int, int, int]]:
    """The same, counted over the entries written."""
    with session_scope() as session:
        classes = session.scalars(
            select(ManifestClass.class_index).where(ManifestClass.manifest_key == manifest_key)
        ).all()
        counts = dict.fromkeys(classes, (0, 0, 0))
        rows = session.execute(
            select(
                ManifestEntry.target_class,
                ManifestEntry.source,
                func.count(),
                func.sum(ManifestEntry.copies),
            )
            .where(ManifestEntry.manifest_key == manifest_key)
            .group_by(ManifestEntry.target_class, ManifestEntry.source)
        )
        for index, source, unique, samples in rows:
            labeled, pseudo_unique, pseudo_samples = counts[index]
            if source == "labeled":
                counts[index] = (unique, pseudo_unique, pseudo_samples)
            else:
                counts[index] = (labeled, unique, int(samples))
        return counts


def copies(manifest_key: int) -> dict[int, int]:
    """item ID -> copies, for the pseudo-labeled entries."""
    with session_scope() as session:
        rows = session.execute(
            select(ManifestEntry.item_id, ManifestEntry.copies).where(
                ManifestEntry.manifest_key == manifest_key, ManifestEntry.source == "pseudo"
            )
        )
        return dict(rows.all())


def plan(manifest_key: int) -> list[tuple]:
    with session_scope() as session:
        rows = session.scalars(
            select(ManifestClass)
            .where(ManifestClass.manifest_key == manifest_key)
            .order_by(ManifestClass.class_index)
        )
        return [(r.threshold, r.target, r.pseudo_unique, r.pseudo_with_copies) for r in rows]


# --- hand-checked cases -----------------------------------------------------------------------


def test_a_class_above_target_keeps_its_most_confident_and_ties_go_to_the_lower_item(teacher):
    job = synthetic.finished_job(teacher, [(CAT, 0.9), (CAT, 0.5), (CAT, 0.7), (CAT, 0.7), (CAT, 0.2)])
    i = job.item_ids
    assert copies(build(job_ids=[job.id], target_per_class=2)) == {i[0]: 1, i[2]: 1}
    assert copies(build(job_ids=[job.id], target_per_class=3)) == {i[0]: 1, i[2]: 1, i[3]: 1}
    assert copies(build(job_ids=[job.id], target_per_class=4)) == {i[0]: 1, i[1]: 1, i[2]: 1, i[3]: 1}


def test_a_class_with_one_image_repeats_it_up_to_the_target(teacher):
    job = synthetic.finished_job(teacher, [(DOG, 0.8), (CAT, 0.9), (CAT, 0.95)])
    manifest_key = build(job_ids=[job.id], target_per_class=5)
    assert copies(manifest_key)[job.item_ids[0]] == 5
    assert plan(manifest_key) == [(0.3, 5, 2, 5), (0.3, 5, 1, 5), (0.3, 5, 0, 0)]  # eel: empty class


def test_a_short_class_gets_the_floor_and_a_seeded_extra_copy(teacher):
    job = synthetic.finished_job(teacher, [(CAT, 0.9), (CAT, 0.8)])
    first, second = job.item_ids
    for seed in range(6):
        # 5 over 2 images: two copies each, and one of them (the lower lottery key) gets a third.
        lucky = min(job.item_ids, key=lambda item: (selection.lottery_key(item, seed), item))
        expected = {first: 2, second: 2} | {lucky: 3}
        assert copies(build(job_ids=[job.id], target_per_class=5, seed=seed)) == expected


def test_the_lottery_is_seeded_and_fair(teacher):
    job = synthetic.finished_job(teacher, [(CAT, 0.9)] * 10)
    extra = [0] * 10
    for seed in range(40):
        got = copies(build(job_ids=[job.id], target_per_class=13, seed=seed))
        assert sorted(got.values()) == [1] * 7 + [2] * 3  # 13 = 10 + exactly 3 extra copies
        for i, item in enumerate(job.item_ids):
            extra[i] += got[item] - 1
    assert sum(extra) == 120 and min(extra) >= 4  # each image's chance is 3/10: ~12 of 40


def test_everything_below_the_threshold_gives_no_pseudo_entries(teacher):
    job = synthetic.finished_job(teacher, [(CAT, 0.2), (DOG, 0.29), (EEL, 0.1)])
    labeled = synthetic.labeled_dataset(CLASSES, [EEL])
    manifest_key = build(job_ids=[job.id], labeled_dataset_ids=[labeled], threshold=0.3, target_per_class=4)
    assert copies(manifest_key) == {}
    assert [row[2:] for row in plan(manifest_key)] == [(0, 0)] * 3
    with pytest.raises(ManifestRequestError, match="the manifest would be empty"):
        build(job_ids=[job.id], threshold=0.3, target_per_class=4)  # and no labeled set


def test_the_threshold_is_inclusive(teacher):
    job = synthetic.finished_job(teacher, [(CAT, 0.5), (CAT, 0.49999)])
    assert copies(build(job_ids=[job.id], threshold=0.5, balance=False)) == {job.item_ids[0]: 1}


def test_without_balancing_every_label_at_or_above_the_threshold_is_kept_once(teacher):
    job = synthetic.finished_job(teacher, [(CAT, 0.9)] * 5 + [(DOG, 0.6), (DOG, 0.1)])
    manifest_key = build(job_ids=[job.id], balance=False, target_per_class=2)
    assert copies(manifest_key) == dict.fromkeys(job.item_ids[:6], 1)
    assert [row[1] for row in plan(manifest_key)] == [None] * 3


def test_even_target_spreads_the_filtered_pool_over_the_classes(teacher):
    job = synthetic.finished_job(teacher, [(CAT, 0.9)] * 6 + [(DOG, 0.9), (DOG, 0.1)])
    manifest_key = build(job_ids=[job.id])
    assert [row[1] for row in plan(manifest_key)] == [3, 3, 3]  # ceil(7 / 3)
    assert [row[3] for row in plan(manifest_key)] == [3, 3, 0]


def test_labeled_distribution_scales_the_labeled_class_shares(teacher):
    labeled = synthetic.labeled_dataset(CLASSES, [CAT, CAT, DOG, EEL])
    job = synthetic.finished_job(teacher, [(CAT, 0.9)] * 5 + [(DOG, 0.9)] * 3)
    by_pool = build(job_ids=[job.id], labeled_dataset_ids=[labeled], target_mode="labeled_distribution")
    assert [row[1] for row in plan(by_pool)] == [4, 2, 2]  # 8 filtered labels split 2:1:1
    by_mean = build(
        job_ids=[job.id],
        labeled_dataset_ids=[labeled],
        target_mode="labeled_distribution",
        target_per_class=3,
    )
    assert [row[1] for row in plan(by_mean)] == [5, 2, 2]  # 9 split 4.5:2.25:2.25, largest remainder


def test_per_class_thresholds_rise_to_the_grid_step_that_leaves_the_target(teacher):
    cats = [(CAT, 0.955), (CAT, 0.952), (CAT, 0.951), (CAT, 0.9), (CAT, 0.5)]
    job = synthetic.finished_job(teacher, [*cats, (DOG, 0.7)])
    manifest_key = build(job_ids=[job.id], target_per_class=2, per_class_thresholds=True, seed=3)
    thresholds = [row[0] for row in plan(manifest_key)]
    assert thresholds == [0.95, 0.3, 0.3]  # dog is short of 2: it keeps the minimum
    kept = copies(manifest_key)
    cat_items = job.item_ids[:3]  # the three at or above 0.95; a seeded two of them are kept
    lottery = sorted(cat_items, key=lambda item: (selection.lottery_key(item, 3), item))
    assert {item for item in kept if item in job.item_ids[:5]} == set(lottery[:2])
    assert kept[job.item_ids[5]] == 2


def test_two_jobs_on_one_item_keep_the_more_confident_label(teacher):
    first = synthetic.finished_job(teacher, [(CAT, 0.6), (DOG, 0.7), (EEL, 0.8)])
    second = synthetic.finished_job(
        teacher, [(DOG, 0.9), (DOG, 0.7), (EEL, 0.4)], dataset_id=first.dataset_id
    )
    manifest_key = build(job_ids=[second.id, first.id], balance=False)
    with session_scope() as session:
        rows = session.execute(
            select(ManifestEntry.item_id, ManifestEntry.job_id, ManifestEntry.target_class)
            .where(ManifestEntry.manifest_key == manifest_key)
            .order_by(ManifestEntry.item_id)
        ).all()
    a, b, c = first.item_ids
    # item a: 0.9 beats 0.6; item b: a tie, the lower job ID; item c: 0.8 beats 0.4.
    assert [tuple(r) for r in rows] == [(a, second.id, DOG), (b, first.id, DOG), (c, first.id, EEL)]


def test_labeled_items_enter_once_with_their_own_class(teacher):
    labeled = synthetic.labeled_dataset(CLASSES, [EEL, CAT])
    job = synthetic.finished_job(teacher, [(CAT, 0.9)])
    manifest_key = build(labeled_dataset_ids=[labeled], job_ids=[job.id], target_per_class=3)
    with session_scope() as session:
        rows = session.execute(
            select(
                ManifestEntry.source,
                ManifestEntry.target_class,
                ManifestEntry.copies,
                ManifestEntry.confidence,
            )
            .where(ManifestEntry.manifest_key == manifest_key)
            .order_by(ManifestEntry.item_id)
        ).all()
    assert [tuple(r) for r in rows] == [
        ("labeled", EEL, 1, None),
        ("labeled", CAT, 1, None),
        ("pseudo", CAT, 3, pytest.approx(0.9)),
    ]


# --- the pieces -------------------------------------------------------------------------------


def test_the_lottery_in_sql_matches_python_on_both_databases(db):
    items = [1, 2, 3, 1000, 65535, 65536, 2**31 - 1, 2**32 + 5, 2**40 + 17]
    with session_scope() as session:
        for seed in (0, 1, 2**31 - 1):
            for item in items:
                sql = f"SELECT {selection._lottery_sql('CAST(:item AS BIGINT)')}"
                got = session.scalar(text(sql), {"item": item, **selection.seed_offsets(seed)})
                assert got == selection.lottery_key(item, seed), (item, seed)
    # Pinned, so that a change to the hash (and so to every manifest) cannot pass unnoticed.
    assert [selection.lottery_key(i, 0) for i in (1, 2, 3)] == [861155699, 989775134, 342214878]


def test_the_grid_step_in_sql_matches_python_on_both_databases(db):
    # 0.29 * 100 and 0.57 * 100 fall just below their integers, 0.07 * 100 and 0.14 * 100 just
    # above; PostgreSQL's cast rounds 0.576 * 100 up to 58.
    values = [0.0, 0.07, 0.14, 0.29, 0.57, 0.576, 0.7, 0.949, 1.0]
    values += [synthetic.f32(v) for v in values + [0.95, 0.3, 0.31]]
    with session_scope() as session:
        for value in values:
            got = session.scalar(text(f"SELECT {label_bins.grid_step_sql(':value')}"), {"value": value})
            assert got == label_bins.grid_step(value), value


@pytest.mark.parametrize(
    ("confidence", "minimum", "expected"),
    [
        (0.952, 0.3, 0.95),
        (0.95, 0.3, 0.94),  # float32 0.95 is 0.94999999: the 0.95 step would drop it
        (0.299, 0.2, 0.29),
        (0.31, 0.3, 0.31),
        (0.305, 0.3, 0.3),
        (1.0, 0, 1.0),
    ],
)
def test_grid_threshold_is_the_highest_step_that_keeps_the_image(confidence, minimum, expected):
    confidence = synthetic.f32(confidence)
    threshold = selection.grid_threshold(confidence, minimum)
    assert threshold == expected and confidence >= threshold


def test_distribution_targets_sum_to_the_total():
    assert selection.distribution_targets([1, 1, 1], total=10) == [4, 3, 3]
    assert selection.distribution_targets([5, 0, 5], total=7) == [4, 0, 3]


# --- properties -------------------------------------------------------------------------------


def reference(labels, item_ids, *, threshold, target, seed, per_class):
    """The selection rules in plain Python, one class at a time."""
    expected = {}
    for c in range(len(CLASSES)):
        pool = [(q, item) for (k, q), item in zip(labels, item_ids, strict=True) if k == c and q >= threshold]
        pool.sort(key=lambda pair: (-pair[0], pair[1]))
        if per_class and len(pool) >= target:
            cut = selection.grid_threshold(pool[target - 1][0], threshold)
            pool = [pair for pair in pool if pair[0] >= cut]
        elif len(pool) >= target:
            expected |= {item: 1 for _, item in pool[:target]}
            continue
        by_lottery = sorted(
            (item for _, item in pool), key=lambda item: (selection.lottery_key(item, seed), item)
        )
        for rank, item in enumerate(by_lottery):
            count = target // len(pool) + (rank < target % len(pool))
            if count:
                expected[item] = count
    return expected


CONFIDENCES = st.sampled_from([0.05, 0.3, 0.31, 0.5, 0.5, 0.62, 0.7, 0.9, 0.95, 1.0])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    labels=st.lists(st.tuples(st.integers(0, 2), CONFIDENCES), max_size=25),
    threshold=st.sampled_from([0.0, 0.3, 0.6]),
    target=st.integers(1, 12),
    seed=st.integers(0, 2**31 - 1),
    per_class=st.booleans(),
)
def test_balancing_brings_every_nonempty_class_to_its_target(
    teacher, labels, threshold, target, seed, per_class
):
    job = synthetic.finished_job(teacher, [(c, synthetic.f32(q)) for c, q in labels])
    labels = [(c, synthetic.f32(q)) for c, q in labels]
    request = dict(
        job_ids=[job.id],
        threshold=threshold,
        target_per_class=target,
        seed=seed,
        per_class_thresholds=per_class,
    )
    if all(q < threshold for _, q in labels):
        with pytest.raises(ManifestRequestError, match="the manifest would be empty"):
            build(**request)
        return
    got = copies(build(**request))
    for c in range(len(CLASSES)):
        members = [
            item for (k, q), item in zip(labels, job.item_ids, strict=True) if k == c and q >= threshold
        ]
        assert sum(got.get(item, 0) for item in members) == (target if members else 0)
    assert got == reference(
        labels, job.item_ids, threshold=threshold, target=target, seed=seed, per_class=per_class
    )


# --- both databases ---------------------------------------------------------------------------


def _scenario() -> tuple[str, list[tuple], list[dict]]:
    """The content ID, entry rows and exported entries of one manifest over the same inputs."""
    synthetic.migrate()
    teacher = synthetic.teacher(CLASSES)
    labels = [(i % 3, synthetic.f32(0.25 + (i * 37 % 75) / 100)) for i in range(120)]
    labeled = synthetic.labeled_dataset(CLASSES, [i % 3 for i in range(9)])
    job = synthetic.finished_job(teacher, labels)
    manifest_key = build(labeled_dataset_ids=[labeled], job_ids=[job.id], target_per_class=50, seed=7)
    with session_scope() as session:
        rows = session.execute(
            select(
                ManifestEntry.item_id, ManifestEntry.source, ManifestEntry.target_class, ManifestEntry.copies
            )
            .where(ManifestEntry.manifest_key == manifest_key)
            .order_by(ManifestEntry.item_id)
        ).all()
        manifest = session.get(Manifest, manifest_key)
        page, _ = reads.entries_page(session, manifest=manifest, cursor=None, limit=1000)
        return manifest.id, [tuple(r) for r in rows], records(page, manifest)


@pytest.mark.postgres
def test_sqlite_and_postgresql_select_the_same_entries_under_the_same_id(monkeypatch, pg_url):
    on_sqlite = _scenario()
    monkeypatch.setenv("NST_DATABASE_URL", pg_url)
    clear_caches()
    on_postgres = _scenario()
    assert on_sqlite == on_postgres
    assert sum(copies for _, source, _, copies in on_sqlite[1] if source == "pseudo") == 150
    assert sum(1 for _, source, _, _ in on_sqlite[1] if source == "labeled") == 9
