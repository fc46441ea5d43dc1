"""``GET /v1/categories``: the default category sets, named tasks and abbreviations of the loaded artifact."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from service.deps import StateDep, require_api_key
from service.schemas import CategoriesResponse, error_responses

router = APIRouter(tags=["categories"], dependencies=[Depends(require_api_key)])


@router.get(
    "/categories",
    response_model=CategoriesResponse,
    summary="Default categories per modality",
    description="What `/v1/classify` scores when no `categories` are sent, the named `task` sets, and the "
    "abbreviations it understands (`DME`, `AMD`...). Any other name is accepted too (prompted with the name).",
    responses=error_responses(401),
)
async def categories(state: StateDep) -> dict[str, Any]:
    return {"model_version": state.engine.version, **state.engine.categories()}
