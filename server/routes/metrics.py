from fastapi import APIRouter, Response

from server.auth.dependencies import require_scope
from server.auth.keys import OPERATOR_SCOPE
from server.metrics import CONTENT_TYPE
from server.routing import ApiRoute
from server.state import Services

router = APIRouter(tags=["metrics"], dependencies=[require_scope(OPERATOR_SCOPE)], route_class=ApiRoute)


@router.get("/metrics")
async def metrics(app: Services) -> Response:
    """Prometheus exposition, for keys with the operator scope (or, unauthenticated, on the separate --metrics-port)."""
    return Response(app.metrics.render(), media_type=CONTENT_TYPE)
