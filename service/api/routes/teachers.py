import json
import logging
from collections.abc import Iterable
from pathlib import Path

from fastapi import APIRouter, File, Form, HTTPException, Query, Response, UploadFile, status
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from nst import storage
from nst.states import TeacherStatus
from service import checkpoints
from service.api.deps import HashId, Offset, RegistryLimit, SessionDep, SettingsDep, get_or_404
from service.api.errors import BODY, ErrorPublic, responses
from service.crud import teachers as crud
from service.models import Teacher
from service.queue import QueueUnavailable, enqueue_teacher_validation
from service.scan import ScanError, resolve_under_roots
from service.schemas import (
    TeacherCreate,
    TeacherMetadata,
    TeacherPublic,
    TeachersPublic,
    TeacherTemperature,
)

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/teachers", tags=["teachers"])

UNPROCESSABLE = status.HTTP_422_UNPROCESSABLE_CONTENT


def _describe(error: ValidationError, prefix: str) -> str:
    return "; ".join(f"{'.'.join([prefix, *map(str, e['loc'])])}: {e['msg']}" for e in error.errors())


def _register(
    session,
    settings,
    response: Response,
    *,
    name: str,
    chunks: Iterable[bytes],
    metadata: TeacherMetadata | None,
) -> TeacherPublic:
    store_dir = storage.join(settings.artifact_dir, "teachers")
    try:
        with checkpoints.received(chunks, name=name, store_dir=store_dir) as upload:
            # The same file registered before: held until the answer, so that a delete cannot
            # remove the teacher or its file between this look and the 200 that vouches for both.
            existing = crud.hold(session, upload.sha)
            if existing is None:  # checked before the file is stored: a refusal leaves nothing
                metadata = metadata or _embedded(upload.header)
                _require_parent(session, metadata)
                path = checkpoints.put(upload, store_dir)
            elif not _stored(path := storage.location(existing.file_path)):
                storage.write_file(upload.file, path)  # lost from the store: the same bytes put back
    except checkpoints.CheckpointError as exc:
        raise HTTPException(UNPROCESSABLE, detail=f"file: {exc}") from None
    except storage.StorageError as exc:  # the artifact store refused or did not answer
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=f"artifact store: {exc}") from None
    teacher, created = (existing, False) if existing is not None else _insert(session, upload, path, metadata)
    if not created:  # the same file registered before, or by a concurrent upload
        response.status_code = status.HTTP_200_OK
        answer = TeacherPublic.model_validate(teacher)
        session.commit()  # lets a delete waiting on the held teacher go on
        return answer
    try:
        enqueue_teacher_validation(teacher.id)
    except QueueUnavailable as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"teacher {teacher.id} is registered but pending: {exc}; "
            f"retry with POST /teachers/{teacher.id}/validate",
        ) from None
    return TeacherPublic.model_validate(teacher)


def _stored(path: storage.Location) -> bool:
    try:
        return storage.info(path)["type"] == "file"
    except storage.ObjectMissing:
        return False


def _require_parent(session, metadata: TeacherMetadata) -> None:
    if metadata.parent_id is not None and session.get(Teacher, metadata.parent_id) is None:
        raise HTTPException(
            UNPROCESSABLE, detail=f"metadata.parent_id: unknown teacher {metadata.parent_id!r}"
        )


def _insert(
    session, upload: checkpoints.Received, path: storage.Location, metadata: TeacherMetadata
) -> tuple[Teacher, bool]:
    """(teacher, created), committed. A concurrent upload of the same file may insert first: its
    teacher is the answer, and the file, the same bytes at the same path, is its file."""
    try:
        teacher, created = crud.create_teacher(
            session, sha=upload.sha, path=path, size=upload.size, metadata=metadata
        )
        session.commit()
        return teacher, created
    except BaseException as exc:
        session.rollback()
        if isinstance(exc, IntegrityError) and (first := session.get(Teacher, upload.sha)) is not None:
            return first, False
        _discard_unreferenced(session, upload.sha, path)
        if isinstance(exc, IntegrityError):
            _require_parent(session, metadata)  # the parent was deleted meanwhile
        raise


def _discard_unreferenced(session, sha: str, path: storage.Location) -> None:
    """Remove a stored teacher file unless a teacher row points to it (one registered by a
    concurrent upload of the same bytes). A failure here is logged, never raised: the caller's
    own error or answer stands, and the file is only an orphan."""
    try:
        if crud.is_registered(session, sha):
            return
    except SQLAlchemyError as exc:  # a lost database
        logger.warning("teacher file %s not removed: %s", path, exc)
        return
    _remove_file(path)


def _remove_file(path: storage.Location) -> None:
    try:
        storage.remove(path)
    except OSError as exc:  # a store that refuses deletes: the file is only an orphan
        logger.warning("teacher file %s not removed: %s", path, exc)


def _embedded(header: dict) -> TeacherMetadata:
    try:
        raw = checkpoints.embedded_metadata(header)
    except checkpoints.CheckpointError as exc:
        raise HTTPException(UNPROCESSABLE, detail=f"metadata: {exc}") from None
    if raw is None:
        raise HTTPException(
            UNPROCESSABLE,
            detail="metadata: required; none was given and the file embeds none "
            "(`nst teachers convert` embeds it)",
        )
    try:
        return TeacherMetadata.model_validate(raw)
    except ValidationError as exc:
        raise HTTPException(UNPROCESSABLE, detail=_describe(exc, "metadata")) from None


@router.post("", status_code=status.HTTP_201_CREATED, responses=responses(*BODY, 503))
def register_teacher_by_path(
    body: TeacherCreate, session: SessionDep, settings: SettingsDep, response: Response
) -> TeacherPublic:
    """Register a safetensors file that lies under a data root; it is copied into the store."""
    roots = [*settings.data_roots, settings.artifact_dir]
    try:
        path = resolve_under_roots(body.path, roots)
        found = storage.info(path)
    except storage.StorageUnavailable as exc:  # the store did not answer; a retry may succeed
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=f"path: {exc}") from None
    except (ScanError, storage.StorageError) as exc:
        raise HTTPException(UNPROCESSABLE, detail=f"path: {exc}") from None
    if found["type"] != "file":
        raise HTTPException(UNPROCESSABLE, detail=f"path: {body.path!r} is not a file")
    return _register(
        session,
        settings,
        response,
        name=storage.name(path),
        chunks=checkpoints.file_chunks(path),
        metadata=body.metadata,
    )


@router.post("/upload", status_code=status.HTTP_201_CREATED, responses=responses(*BODY, 503))
def upload_teacher(
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
    file: UploadFile = File(description="A .safetensors checkpoint"),
    metadata: str | None = Form(None, description="TeacherMetadata as JSON"),
) -> TeacherPublic:
    parsed = None
    if metadata:
        try:
            parsed = TeacherMetadata.model_validate(json.loads(metadata))
        except json.JSONDecodeError as exc:
            raise HTTPException(UNPROCESSABLE, detail=f"metadata: not JSON ({exc})") from None
        except ValidationError as exc:
            raise HTTPException(UNPROCESSABLE, detail=_describe(exc, "metadata")) from None

    def chunks() -> Iterable[bytes]:
        while chunk := file.file.read(1 << 20):
            yield chunk

    return _register(
        session,
        settings,
        response,
        name=Path(file.filename or "upload").name,
        chunks=chunks(),
        metadata=parsed,
    )


@router.get("")
def list_teachers(
    session: SessionDep,
    offset: Offset = 0,
    limit: RegistryLimit = 100,
    status_: TeacherStatus | None = Query(None, alias="status"),
) -> TeachersPublic:
    rows, count = crud.list_teachers(session, offset=offset, limit=limit, status=status_)
    return TeachersPublic(data=rows, count=count)


@router.get("/{teacher_id}", responses=responses(404))
def get_teacher(teacher_id: HashId, session: SessionDep) -> TeacherPublic:
    return get_or_404(session, Teacher, teacher_id)


@router.put("/{teacher_id}/temperature", responses=responses(404, *BODY))
def set_temperature(teacher_id: HashId, body: TeacherTemperature, session: SessionDep) -> TeacherPublic:
    """Store the softmax temperature fitted on a val split (`nst evaluate --fit-temperature`);
    a job created with `"temperature": "calibrated"` labels with it."""
    teacher = get_or_404(session, Teacher, teacher_id)
    teacher.calibrated_temperature = body.temperature
    session.commit()
    return teacher


@router.get(
    "/{teacher_id}/checkpoint",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The safetensors file"},
        502: {"model": ErrorPublic, "description": "The artifact store failed"},
        **responses(404, 503),
    },
)
def download_checkpoint(teacher_id: HashId, session: SessionDep) -> Response:
    """The teacher's safetensors file, whose sha256 is its ID: what `nst evaluate` and any host
    without the service's disk load it from."""
    teacher = get_or_404(session, Teacher, teacher_id)
    path = storage.location(teacher.file_path)
    filename = f"teacher-{teacher_id[:16]}.safetensors"
    try:
        found = storage.info(path)
    except storage.ObjectMissing:
        found = None
    except storage.StorageUnavailable as exc:  # a later attempt may succeed
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, detail=f"teacher {teacher_id}: {exc}"
        ) from None
    except storage.StorageError as exc:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, detail=f"teacher {teacher_id}: {exc}") from None
    if found is None or found["type"] != "file":
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"teacher {teacher_id}: its file is gone")
    if isinstance(path, Path):
        return FileResponse(path, media_type="application/octet-stream", filename=filename)
    return StreamingResponse(
        storage.chunks(path),
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(found["size"]),
            "Content-Disposition": f'attachment; filename="{filename}"',
        },
    )


@router.post("/{teacher_id}/validate", status_code=status.HTTP_202_ACCEPTED, responses=responses(404, 503))
def revalidate_teacher(teacher_id: HashId, session: SessionDep) -> TeacherPublic:
    teacher = get_or_404(session, Teacher, teacher_id)
    try:
        enqueue_teacher_validation(teacher.id)
    except QueueUnavailable as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=str(exc)) from None
    return teacher


@router.delete("/{teacher_id}", status_code=status.HTTP_204_NO_CONTENT, responses=responses(404, 409))
def delete_teacher(teacher_id: HashId, session: SessionDep) -> Response:
    teacher = get_or_404(session, Teacher, teacher_id)
    blockers = crud.dependents(session, teacher_id=teacher_id)
    if blockers:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail=f"teacher {teacher_id} is used by {', '.join(blockers)}; delete those first",
        )
    path = storage.location(teacher.file_path)
    session.delete(teacher)
    # The deleted row stays locked until the commit (PostgreSQL: its key; SQLite: the database),
    # so the file goes while no other request can register these bytes: a re-upload meanwhile
    # either finds the row and answers 200 (it came first), or inserts after this commit and
    # writes its file after this removal. Never a teacher whose file was removed.
    session.flush()
    _remove_file(path)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
