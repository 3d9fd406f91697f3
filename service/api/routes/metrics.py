from fastapi import APIRouter, Request, Response
from prometheus_client.exposition import choose_encoder

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus's text format: this process's requests, and the jobs, shards, labels, item
    errors and queue depth every process reads alike (README, "What an operator watches")."""
    encode, content_type = choose_encoder(request.headers.get("accept"))  # OpenMetrics if asked
    return Response(encode(request.app.state.metrics), media_type=content_type)
