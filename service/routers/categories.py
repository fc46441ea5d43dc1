"""``GET /v1/categories``: the default category sets, named tasks, known categories and their aliases."""

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
    description="What `/v1/classify` scores when no `categories` are sent, the named `task` sets, every "
    "known category and the other names each is known by (`healthy`, `no findings` -> `normal`; `DME`, `DMO` -> "
    "`diabetic macular edema`): an alias scores exactly as its category. Any other name is accepted too: it is "
    "prompted with the name inside several clinical sentences and answered with `known: false` and the "
    "`similar_known` categories it resembles. `screened`: whether each modality's default set is screened "
    "(`/v1/classify` `decision=auto`: normal against the other categories first).",
    responses=error_responses(401),
)
async def categories(state: StateDep) -> dict[str, Any]:
    return {"model_version": state.engine.version, **state.engine.categories()}
