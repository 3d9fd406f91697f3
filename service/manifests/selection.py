"""Filter and balance pseudo labels into manifest entries, in SQL (docs/METHOD.md steps 3-4).

The job's label bins (or, for a pool of several jobs, one grouped scan) plan every class
(``pool_histogram``, ``class_plan``) and one INSERT ... SELECT with one window function writes
the entries, identical on SQLite (3.25+) and PostgreSQL, so a million labels never pass
through Python.

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

from sqlalchemy import text
from sqlalchemy.orm import Session

from service.crud.label_bins import GRID, grid_step, grid_step_sql, job_bins, threshold_step

PRIME = 2**31 - 1


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


def pool_histogram(
    session: Session, *, job_ids: Sequence[int], threshold: float
) -> dict[int, dict[int, int]]:
    """Per class, the pool's labels at or above the threshold counted by grid step (the highest
    multiple of 1/GRID at or below the confidence), at most GRID + 1 rows a class. It gives each
    class's size, the pool's, and every threshold the selection needs. One job's, with a
    threshold on the grid, are its label bins; a pool of several jobs (where the more confident
    label of an item wins) or a threshold off the grid takes one grouped scan."""
    histogram: dict[int, dict[int, int]] = {}
    lowest = threshold_step(threshold)
    if len(job_ids) == 1 and lowest is not None:
        for predicted, step, count in job_bins(session, job_ids[0], min_step=lowest):
            histogram.setdefault(predicted, {})[step] = count
        return histogram
    pool, params = _pool_sql(job_ids)
    sql = f"""
        SELECT predicted, step, count(*) FROM (
            SELECT predicted, {grid_step_sql("confidence")} AS step
            FROM ({pool}) AS pool WHERE confidence >= :threshold
        ) AS stepped GROUP BY predicted, step"""
    for predicted, step, count in session.execute(text(sql), {**params, "threshold": threshold}):
        histogram.setdefault(predicted, {})[step] = count
    return histogram


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
    stays in), but not below ``minimum``."""
    return max(minimum, grid_step(confidence) / GRID)


def class_plan(
    bins: dict[int, int], *, threshold: float, target: int | None, per_class: bool
) -> tuple[float, int, float]:
    """One class's threshold, its labels at or above it (``available``) and the ``cutoff`` below
    which none of them can be selected, from its histogram (``pool_histogram``).

    Over its target, the ``target``-th most confident label sits in the highest grid step
    whose labels and those above it number at least ``target``: per-class thresholds rise to
    that step (``grid_threshold`` of that label), and a single threshold keeps its top
    ``target`` among the labels from that step up, so the rest need no ranking."""
    available = sum(bins.values())
    if not target or available < target:
        return threshold, available, threshold
    above = 0
    for step in sorted(bins, reverse=True):
        above += bins[step]
        if above >= target:
            break
    cutoff = step / GRID
    if cutoff <= threshold:
        return threshold, available, threshold
    if per_class:
        return cutoff, above, cutoff
    return threshold, available, cutoff


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


def _copies_sql(*, balance: bool, keep_most_confident: bool) -> tuple[str, str]:
    """How many copies each label gets, and the columns that needs beside the label's: its
    class's target and size and its rank in the class. A class at or over its target with one
    threshold ranks by confidence and keeps its top ``target``; any other class ranks by the
    lottery and spreads ``target`` over its ``available`` labels."""
    if not balance:
        return "1", ""
    spread = "target / available + CASE WHEN rank <= target % available THEN 1 ELSE 0 END"
    lottery = _lottery_sql("pool.item_id")
    if not keep_most_confident:
        order, copies = f"{lottery}, pool.item_id", spread
    else:
        # Two keys, each null in the other's classes: a class is ordered by exactly one.
        short = "c.available < c.target"
        order = (
            f"CASE WHEN {short} THEN {lottery} END, "
            f"CASE WHEN NOT ({short}) THEN pool.confidence END DESC, pool.item_id"
        )
        copies = (
            f"CASE WHEN available < target THEN {spread} ELSE CASE WHEN rank <= target THEN 1 ELSE 0 END END"
        )
    window = f"row_number() OVER (PARTITION BY pool.predicted ORDER BY {order})"
    return copies, f", c.target, c.available, {window} AS rank"


def insert_pseudo_entries(
    session: Session,
    *,
    manifest_key: int,
    job_ids: Sequence[int],
    balance: bool,
    keep_most_confident: bool,
    seed: int,
) -> None:
    """Filter each class at its threshold and balance it to its target, in one statement. Only
    labels at or above a class's ``cutoff`` are ranked, and the entries are written in item
    order (the primary key's), which makes their index grow at its right edge."""
    pool, params = _pool_sql(job_ids)
    copies, columns = _copies_sql(balance=balance, keep_most_confident=keep_most_confident)
    sql = f"""
        INSERT INTO manifest_entries
            (manifest_key, item_id, source, job_id, target_class, copies, confidence)
        SELECT :manifest_key, item_id, 'pseudo', job_id, predicted, copies, confidence FROM (
            SELECT item_id, job_id, predicted, confidence, {copies} AS copies FROM (
                SELECT pool.item_id, pool.job_id, pool.predicted, pool.confidence{columns}
                FROM ({pool}) AS pool
                JOIN manifest_classes AS c
                  ON c.manifest_key = :manifest_key AND c.class_index = pool.predicted
                WHERE pool.confidence >= c.cutoff
            ) AS ranked
        ) AS selected WHERE copies > 0 ORDER BY item_id"""
    params |= {"manifest_key": manifest_key, **seed_offsets(seed)}
    session.execute(text(sql), params)
