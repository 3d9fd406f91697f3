"""Progress bars fed by the service's own counters."""

from __future__ import annotations

from tqdm import tqdm

from nst.client import Client


def wait_with_progress(client: Client, job: dict, *, timeout: float | None = None) -> dict:
    """Wait for a labeling job, showing items done, state, failures and how long it has waited
    for a worker, when it has (``timeout`` None: until it ends)."""
    with tqdm(total=job["items_total"], desc=f"label job {job['id']}", unit="img") as bar:

        def update(current: dict) -> None:
            bar.n = current["items_done"] + current["items_failed"]
            postfix = {"state": current["state"], "failed": current["items_failed"]}
            if current.get("waiting_for_worker"):  # absent from older APIs
                waited = tqdm.format_interval(current["worker_idle_s"])
                postfix["waiting for a worker"] = f"{waited} ({workers_online(client)})"
            bar.set_postfix(postfix)
            bar.refresh()

        return client.wait_for_job(job["id"], timeout=timeout, on_progress=update)


def workers_online(client: Client) -> str:
    """'no worker online' or 'N online' (then busy with other jobs, or on another broker), for
    a job that waits for a worker."""
    online = client.workers()["online"]
    return f"{online} online" if online else "no worker online"
