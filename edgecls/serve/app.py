"""FastAPI app for one Predictor: `/classify`, `/classify/batch`, `/health`, `/model`, the web page.

Work split: the event loop only parses requests; decoding + preprocessing run in a small thread
pool (PIL and numpy release the GIL) and every forward pass runs in the MicroBatcher's single
model thread. The API never takes a server-side path from a request: images come only as
uploaded bytes.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgecls.serve.batcher import MicroBatcher
from edgecls.serve.errors import ApiError, error_response
from edgecls.serve.uploads import MULTIPART_SLACK, check_size, decode_image, image_files, label, read_form

STATIC_DIR = Path(__file__).resolve().parent / "static"
log = logging.getLogger("edgecls.serve")


@dataclass
class ServeSettings:
    """Limits and defaults of one server (the CLI flags)."""

    max_upload_bytes: int = 10 * 1024 * 1024  # per image
    max_batch_files: int = 32  # files per /classify/batch request
    max_pixels: int = 64_000_000  # width x height, checked before decoding
    default_topk: int = 5
    decode_threads: int = min(4, os.cpu_count() or 1)
    max_model_batch: int = 32  # micro-batch size cap of one forward pass


# ---- response schemas (for the OpenAPI description) ----
class Prediction(BaseModel):
    label: str
    probability: float


class ClassifyResponse(BaseModel):
    success: bool = True
    predictions: list[Prediction]


class BatchItem(BaseModel):
    filename: str | None
    success: bool
    predictions: list[Prediction] | None = None
    error: str | None = None
    status: int = 200


class BatchResponse(BaseModel):
    success: bool = True
    failed: int
    results: list[BatchItem]


class ErrorResponse(BaseModel):
    success: bool = False
    error: str


def _upload_body(field_doc: str, many: bool) -> dict:
    file_schema = {"type": "string", "format": "binary"}
    schema = {"type": "array", "items": file_schema} if many else file_schema
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["img"],
                        "properties": {"img": {**schema, "description": field_doc}},
                    }
                }
            },
        }
    }


ERRORS = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (400, "bad input: missing/wrong field, empty, not an image, truncated, bad topk"),
        (413, "file over the byte limit, too many pixels, or too many files"),
        (415, "body is not multipart/form-data"),
    )
}


def create_app(predictor, settings: ServeSettings | None = None, catalog=None, embedder=None) -> FastAPI:
    """The app for `predictor` (an edgecls.predict.Predictor); with a `catalog` (queried with `embedder`),
    also POST /search (edgecls.serve.search)."""
    settings = settings or ServeSettings()
    batcher = MicroBatcher(predictor.predict_arrays, max_batch=settings.max_model_batch)
    decode_pool = ThreadPoolExecutor(max_workers=max(1, settings.decode_threads), thread_name_prefix="edgecls-decode")
    num_classes = len(predictor.classes)
    info = dict(predictor.info())  # read once (an ONNX file's precision is read from its graph)
    info["path"] = os.path.basename(str(info.get("path", "")))  # the file's name, not where it lives

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            decode_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="edgecls serve",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        description="Image classification API for one edgecls model. Upload images as multipart "
        'field `img`. Every error is JSON `{"success": false, "error": ...}` with a 4xx code.',
    )
    app.state.predictor = predictor
    app.state.settings = settings
    app.state.batcher = batcher

    # ---- every error is JSON with success: false ----
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no such endpoint {request.url.path!r}; see GET /openapi.json for the API"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path!r}; see GET /openapi.json for the API"
        return error_response(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()]
        return error_response(400, "bad request: " + "; ".join(parts))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal server error ({type(exc).__name__}); see the server log")

    # ---- helpers ----
    def parse_topk(raw: str | None) -> int:
        if raw is None or raw == "":
            return min(settings.default_topk, num_classes)
        try:
            k = int(raw)
        except ValueError:
            raise ApiError(
                400, f"topk={raw!r} is not an integer; use 1..{num_classes} (the model has {num_classes} classes)"
            ) from None
        if k < 1:
            raise ApiError(400, f"topk={k} must be at least 1; use 1..{num_classes}")
        return min(k, num_classes)

    def load_one(data: bytes, name: str):
        """Thread-pool job: bytes -> preprocessed 3xHxW array (ApiError on bad input)."""
        check_size(data, name=name, max_bytes=settings.max_upload_bytes)
        img = decode_image(data, name=name, max_pixels=settings.max_pixels)
        return predictor.preprocess_image(img)

    async def prepare(upload) -> object:
        data = await upload.read()
        await upload.close()
        return await asyncio.get_running_loop().run_in_executor(decode_pool, load_one, data, f"img {label(upload)}")

    def predictions(row, k: int) -> list[dict]:
        return [{"label": name, "probability": score} for score, name in predictor.topk(row, k)]

    # ---- endpoints ----
    @app.post(
        "/classify",
        response_model=ClassifyResponse,
        responses=ERRORS,
        tags=["classify"],
        openapi_extra=_upload_body("the image file (JPEG, PNG, BMP, WebP, TIFF)", many=False),
        summary="Top-K classes of one image",
    )
    async def classify(request: Request, topk: str | None = None):
        """Multipart field `img`: one image. `?topk=` how many classes (default 5, capped at the class count)."""
        k = parse_topk(topk)
        several = "use POST /classify/batch for several"
        form = await read_form(
            request,
            max_body=settings.max_upload_bytes + MULTIPART_SLACK,
            max_files=2,
            what="per image",
            too_many=ApiError(400, f"/classify takes one image in field 'img' but got more; {several}"),
        )
        try:
            files = image_files(form)
            if len(files) > 1:
                raise ApiError(400, f"/classify takes one image in field 'img' but got {len(files)}; {several}")
            array = await prepare(files[0])
        finally:
            await form.close()  # spooled temp files go away even when the request failed
        (row,) = await batcher.predict([array])
        return JSONResponse({"predictions": predictions(row, k), "success": True})

    @app.post(
        "/classify/batch",
        response_model=BatchResponse,
        responses=ERRORS,
        tags=["classify"],
        openapi_extra=_upload_body("one or more image files, the field repeated", many=True),
        summary="Top-K classes of several images",
    )
    async def classify_batch(request: Request, topk: str | None = None):
        """Repeat multipart field `img` (at most --max-batch files). A bad file fails only its own entry
        (`success: false`, `error`, `status`); the others are still classified."""
        k = parse_topk(topk)
        limit = settings.max_batch_files
        split = "split them over several requests (or start the server with a larger --max-batch)"
        form = await read_form(
            request,
            max_body=limit * settings.max_upload_bytes + MULTIPART_SLACK,
            max_files=limit + 1,
            what=f"({limit} images of at most {settings.max_upload_bytes / 2**20:.3g} MiB)",
            too_many=ApiError(413, f"more files than the server's limit of {limit} per batch; {split}"),
        )
        try:
            files = image_files(form)
            if len(files) > limit:
                raise ApiError(413, f"{len(files)} files is more than the server's limit of {limit} per batch; {split}")
            prepared = await asyncio.gather(*(prepare(f) for f in files), return_exceptions=True)
        finally:
            await form.close()
        good = [i for i, p in enumerate(prepared) if not isinstance(p, BaseException)]
        for p in prepared:
            if isinstance(p, BaseException) and not isinstance(p, ApiError):
                raise p
        rows = await batcher.predict([prepared[i] for i in good]) if good else []
        by_index = dict(zip(good, rows))
        results = []
        for i, (upload, p) in enumerate(zip(files, prepared)):
            if i in by_index:
                results.append(
                    {
                        "filename": upload.filename,
                        "success": True,
                        "status": 200,
                        "predictions": predictions(by_index[i], k),
                    }
                )
            else:
                results.append({"filename": upload.filename, "success": False, "status": p.status, "error": p.message})
        return JSONResponse({"success": True, "failed": len(files) - len(good), "results": results})

    @app.get("/health", tags=["service"], summary="Liveness and load")
    async def health():
        return {
            "success": True,
            "status": "ok",
            "backbone": predictor.backbone,
            "queued": batcher.pending,
            "batches": batcher.batches,
            "images": batcher.images,
        }

    @app.get(
        "/model",
        tags=["service"],
        summary="Model file name, precision (fp32 | int8), backbone, classes, input size, preprocessing, limits",
    )
    async def model():
        limits = {
            "max_upload_bytes": settings.max_upload_bytes,
            "max_batch_files": settings.max_batch_files,
            "max_pixels": settings.max_pixels,
            "default_topk": min(settings.default_topk, num_classes),
        }
        return {"success": True, **info, "limits": limits}

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    if catalog is not None:
        from edgecls.serve.search import add_search_routes

        add_search_routes(app, catalog, embedder, settings, decode_pool)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
