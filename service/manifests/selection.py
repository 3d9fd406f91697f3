"""Filter and balance pseudo labels into manifest entries, in SQL (docs/METHOD.md steps 3-4).

Everything here runs as a few INSERT ... SELECT statements with window functions, identical on
SQLite (3.25+) and PostgreSQL, so a million labels never pass through Python.

Per class ``c`` with target ``T`` and ``n`` labels at or above its threshold:

- ``n >= T`` with one global threshold: the ``T`` most confident images, one copy each (ties
  go to the lower item ID).
- otherwise every image gets ``T // n`` copies, and exactly ``T % n`` of them, drawn by a
  seeded lottery, get one more. That is the authors' "floor, plus one with probability equal to
  the fraction" (each image's chance is ``(T % n) / n``), drawn without replacement so that the
  class reaches ``T`` exactly. With ``n > T`` (per-class thresholds) it keeps a random ``T``,
  the authors' Bernoulli keep below one copy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from service.models import Label, ManifestClass

PRIME = 2**31 - 1
GRID = 100  # per-class thresholds are multiples of 1/GRID, as in the authors' code


# --- the lottery ------------------------------------------------------------------------------


def _splitmix64(x: int) -> int:
    mask = 2**64 - 1
    x = (x + 0x9E3779B97F4A7C15) & mask
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
    return x ^ (x >> 31)


def seed_offsets(seed: int) -> dict[str, int]:
    """Two offsets below PRIME, mixed from the seed in Python, where 64-bit arithmetic is easy."""
    mixed = _splitmix64(seed)
    return {"seed_a": (mixed & 0x7FFFFFFF) % PRIME, "seed_b": (mixed >> 33) % PRIME}


def lottery_key(item_id: int, seed: int) -> int:
    """The lottery's order, mirrored in SQL by ``_lottery_sql``: two rounds of squaring modulo a
    prime. Squaring is what makes it nonlinear (add-and-multiply hashes rank neighbouring items
    almost the same way for every seed), and every product stays below 2**62, so neither database
    overflows or turns to floating point."""
    offsets = seed_offsets(seed)
    x = (item_id + offsets["seed_a"]) % PRIME
    x = (x * x) % PRIME
    x = (x + offsets["seed_b"]) % PRIME
    return (x * x) % PRIME


def _lottery_sql(column: str) -> str:
    x = f"(({column} + CAST(:seed_a AS BIGINT)) % {PRIME})"
    x = f"(({x} * {x}) % {PRIME})"
    x = f"(({x} + CAST(:seed_b AS BIGINT)) % {PRIME})"
    return f"(({x} * {x}) % {PRIME})"


# --- the pool ---------------------------------------------------------------------------------


def _pool_sql(job_ids: Sequence[int]) -> tuple[str, dict]:
    """The jobs' labels, one row per item: where two jobs labeled the same item, the more
    confident label wins (then the lower job ID)."""
    params = {f"job_{i}": job_id for i, job_id in enumerate(job_ids)}
    if len(job_ids) == 1:
        return "SELECT job_id, item_id, predicted, confidence FROM labels WHERE job_id = :job_0", params
    names = ", ".join(f":{name}" for name in params)
    sql = f"""
        SELECT job_id, item_id, predicted, confidence FROM (
            SELECT job_id, item_id, predicted, confidence,
                   row_number() OVER (PARTITION BY item_id ORDER BY confidence DESC, job_id) AS pick
            FROM labels WHERE job_id IN ({names})
        ) AS labelled WHERE pick = 1"""
    return sql, params


def filtered_pool_size(session: Session, *, job_ids: Sequence[int], threshold: float) -> int:
    """Distinct items with a label at or above the threshold (the deduplicated, filtered pool)."""
    # One job has one label per item; only several need the (costlier) distinct count.
    counted = func.count() if len(job_ids) == 1 else func.count(func.distinct(Label.item_id))
    query = select(counted).where(Label.job_id.in_(job_ids), Label.confidence >= threshold)
    return session.scalar(query) or 0


# --- targets and thresholds -------------------------------------------------------------------


def distribution_targets(labeled_counts: Sequence[int], *, total: int) -> list[int]:
    """Targets in the labeled set's proportions, summing to ``total`` (largest remainders)."""
    labeled_total = sum(labeled_counts)
    shares = [total * count / labeled_total for count in labeled_counts]
    targets = [math.floor(share) for share in shares]
    by_remainder = sorted(range(len(shares)), key=lambda i: (targets[i] - shares[i], i))
    for i in by_remainder[: total - sum(targets)]:
        targets[i] += 1
    return targets


def grid_threshold(confidence: float, minimum: float) -> float:
    """The highest multiple of 1/GRID at or below ``confidence`` (so that the image holding it
    stays in), but not below ``minimum``. Float comparisons, exactly as the SQL filter makes them."""
    step = math.floor(confidence * GRID)
    while (step + 1) / GRID <= confidence:
        step += 1
    while step / GRID > confidence:
        step -= 1
    return max(minimum, step / GRID)


def raise_thresholds_to_targets(
    session: Session, *, manifest_key: int, job_ids: Sequence[int], threshold: float
) -> None:
    """Per class, lift the threshold as high as the target allows: to the grid step at or below
    the confidence of the target-th most confident image. Classes short of their target keep the
    minimum."""
    pool, params = _pool_sql(job_ids)
    sql = f"""
        SELECT c.class_index, CAST(ranked.confidence AS DOUBLE PRECISION) FROM (
            SELECT predicted, confidence,
                   row_number() OVER (PARTITION BY predicted ORDER BY confidence DESC, item_id) AS rank
            FROM ({pool}) AS pool WHERE confidence >= :threshold
        ) AS ranked
        JOIN manifest_classes AS c
          ON c.manifest_key = :manifest_key AND c.class_index = ranked.predicted AND ranked.rank = c.target"""
    # The cast: PostgreSQL prints a REAL as its shortest decimal (0.7 for 0.69999999), which
    # would read back as a larger double than the value that the filter compares.
    rows = session.execute(text(sql), {**params, "threshold": threshold, "manifest_key": manifest_key})
    updates = [
        {"manifest_key": manifest_key, "class_index": index, "threshold": grid_threshold(conf, threshold)}
        for index, conf in rows
    ]
    if updates:
        session.execute(update(ManifestClass), updates)


# --- entries ----------------------------------------------------------------------------------


def insert_labeled_entries(session: Session, *, manifest_key: int, dataset_ids: Sequence[int]) -> None:
    params = {f"dataset_{i}": dataset_id for i, dataset_id in enumerate(dataset_ids)}
    names = ", ".join(f":{name}" for name in params)
    # CAST(NULL ...): PostgreSQL would otherwise type a bare NULL in a SELECT list as text.
    sql = f"""
        INSERT INTO manifest_entries
            (manifest_key, item_id, source, job_id, target_class, copies, confidence)
        SELECT :manifest_key, id, 'labeled', CAST(NULL AS INTEGER), label, 1, CAST(NULL AS REAL)
        FROM items WHERE dataset_id IN ({names}) AND label IS NOT NULL"""
    session.execute(text(sql), {**params, "manifest_key": manifest_key})


def _copies_sql(*, balance: bool, keep_most_confident: bool) -> tuple[str, list[str]]:
    """How many copies each filtered label gets, and the window columns that expression needs."""
    if not balance:
        return "1", []
    by_class = "PARTITION BY pool.predicted"
    windows = [
        f"row_number() OVER ({by_class} ORDER BY {_lottery_sql('pool.item_id')}, pool.item_id) AS draw",
        f"count(*) OVER ({by_class}) AS n",
    ]
    spread = "target / n + CASE WHEN draw <= target % n THEN 1 ELSE 0 END"
    if not keep_most_confident:
        return spread, windows
    windows.append(f"row_number() OVER ({by_class} ORDER BY pool.confidence DESC, pool.item_id) AS rank")
    return f"CASE WHEN n >= target THEN CASE WHEN rank <= target THEN 1 ELSE 0 END ELSE {spread} END", windows


def insert_pseudo_entries(
    session: Session,
    *,
    manifest_key: int,
    job_ids: Sequence[int],
    balance: bool,
    keep_most_confident: bool,
    seed: int,
) -> None:
    """Filter each class at its threshold and balance it to its target, in one statement."""
    pool, params = _pool_sql(job_ids)
    copies, windows = _copies_sql(balance=balance, keep_most_confident=keep_most_confident)
    columns = ",\n".join(["pool.item_id, pool.job_id, pool.predicted, pool.confidence, c.target", *windows])
    sql = f"""
        INSERT INTO manifest_entries
            (manifest_key, item_id, source, job_id, target_class, copies, confidence)
        SELECT :manifest_key, item_id, 'pseudo', job_id, predicted, copies, confidence FROM (
            SELECT item_id, job_id, predicted, confidence, {copies} AS copies FROM (
                SELECT {columns}
                FROM ({pool}) AS pool
                JOIN manifest_classes AS c
                  ON c.manifest_key = :manifest_key AND c.class_index = pool.predicted
                WHERE pool.confidence >= c.threshold
            ) AS ranked
        ) AS selected WHERE copies > 0"""
    params |= {"manifest_key": manifest_key, **seed_offsets(seed)}
    session.execute(text(sql), params)
