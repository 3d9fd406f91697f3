"""Set-up for each Celery pool process, connected when the worker imports its tasks."""

from __future__ import annotations

import gc
import logging
import multiprocessing

from celery.signals import worker_init, worker_process_init

from workers import cores

logger = logging.getLogger(__name__)


@worker_init.connect
def _count_pool_processes(sender, **_) -> None:
    # In the worker's main process, before it forks the pool: each pool process inherits it.
    cores.note_pool_processes(sender.concurrency)


@worker_process_init.connect
def _share_the_cores(**_) -> None:
    import torch

    from nst.config import get_settings

    if cores.pool_processes() > 1:  # one process keeps torch's default, the host's cores
        torch.set_num_threads(cores.share(torch.get_num_threads()))
    logger.info(
        "pool process of %d: %d torch threads, %d decode processes",
        cores.pool_processes(),
        torch.get_num_threads(),
        cores.decode_processes(get_settings().decode_workers),
    )


@worker_process_init.connect
def _allow_decoder_processes(**_) -> None:
    # Celery's pool processes are daemonic and Python forbids daemons to have children, but the
    # labeling DataLoader decodes images in child processes. Clearing the flag is safe: the
    # DataLoader's workers watch their parent and exit when it dies.
    multiprocessing.current_process()._config["daemon"] = False


@worker_process_init.connect
def _freeze_the_imported_heap(**_) -> None:
    # The pool process starts with torch, timm and the rest imported: a heap that lives as long
    # as the process. Labeling allocates a dict per label, which sets off full collections, and
    # each walked that whole heap: 8% of the labeling loop on PostgreSQL (bench/label_profile.py).
    # Frozen objects are left out of the collector's walks (reference counting still frees them).
    gc.freeze()


@worker_process_init.connect
def _drop_the_inherited_engine(**_) -> None:
    # The worker's main process (its reaper) may have opened database connections before this
    # pool process was forked: they must not be shared. SQLAlchemy's recipe for a fork.
    from service.core.db import get_engine, get_session_factory

    if get_engine.cache_info().currsize:
        get_engine().dispose(close=False)
    get_engine.cache_clear()
    get_session_factory.cache_clear()
