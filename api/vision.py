"""``POST /api/cv/yolo/detect``: the objects in a picture (core.analysis), as JSON."""

from __future__ import annotations

import base64

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from api.context import ApiContext, ApiError, Caller, with_rate_headers
from api.diffusion import linked_image
from api.schemas import DetectBody, DetectionItem, DetectResult
from core.errors import InvalidField
from engine.errors import EngineError, ValidationError

PREFIX = "/api/cv/yolo"
RETRY_AFTER_S = 30


def vision_routes() -> APIRouter:
    router = APIRouter(tags=["vision"])

    @router.post("/detect", response_model=DetectResult)
    async def detect(body: DetectBody, request: Request, account: Caller) -> Response:
        """Find the objects in a picture: labelled boxes, a count per label and the picture
        with the boxes drawn. Give `image` (base64) or `image_url` (https)."""
        context: ApiContext = request.app.state.context
        analyzer = context.service.analyzer
        if not analyzer.enabled:
            raise ApiError(503, "detection_off", analyzer.disabled_reason)
        data = await _picture(context, body)
        try:
            analysis = await analyzer.analyze(data, body.threshold)
        except InvalidField as error:
            raise ApiError(422, "invalid_request", str(error), field=error.field) from None
        except ValidationError as error:
            raise ApiError(422, "invalid_request", str(error), field="image") from None
        except EngineError as error:  # the service down or broken, the model not loadable
            raise ApiError(
                503,
                "detector_unavailable",
                str(error),
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from None
        result = DetectResult(
            detector=analysis.detector,
            width=analysis.width,
            height=analysis.height,
            detections=[
                DetectionItem(label=d.label, score=d.score, box=[round(v, 1) for v in d.box])
                for d in analysis.detections
            ],
            counts=dict(analysis.counts),
            annotated_image=base64.b64encode(analysis.annotated_png).decode(),
        )
        return with_rate_headers(request, JSONResponse(result.model_dump(mode="json")))

    return router


async def _picture(context: ApiContext, body: DetectBody) -> bytes:
    if (body.image is None) == (body.image_url is None):
        raise ApiError(
            422, "invalid_request", "Give image or image_url (one of them).", field="image"
        )
    if body.image is not None:
        return base64.b64decode(body.image)
    assert body.image_url is not None
    return await linked_image(context, body.image_url, "image_url")
