from fastapi import APIRouter

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict:
    """The process is alive and answering."""
    return {"status": "ok"}
