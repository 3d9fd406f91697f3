from fastapi import APIRouter

from nst import software
from nst.states import WorkerState
from service.api.deps import SessionDep
from service.crud import workers as crud
from service.schemas import WorkerPublic, WorkersPublic

router = APIRouter(prefix="/workers", tags=["workers"])


@router.get("")
def list_workers(session: SessionDep) -> WorkersPublic:
    """The worker processes that reported in the last day (each reports every `NST_HEARTBEAT_S`):
    which are up, since when a silent one has been gone, what each runs, and where the online
    ones and the API differ in it."""
    found = crud.list_workers(session)
    data = [
        WorkerPublic(
            name=s.worker.name,
            pid=s.worker.pid,
            device=s.worker.device,
            concurrency=s.worker.concurrency,
            state=s.state,
            silent_s=round(s.silent_s, 1),
            started_at=s.worker.started_at,
            last_seen_at=s.worker.last_seen_at,
            stopped_at=s.worker.stopped_at,
            software=s.worker.software,
        )
        for s in found
    ]
    return WorkersPublic(
        data=data,
        count=len(data),
        online=sum(s.state == WorkerState.ONLINE for s in found),
        software_differs=crud.software_differences(found, api=software.installed()),
    )
