"""`POST /search` and `GET /catalog/image/{row}` for a product catalog (edgecls.embed.catalog) beside /classify.

Uploads are validated exactly as /classify's (edgecls.serve.uploads). Thumbnails are the catalog's own copies
(CAT/images), addressed by embedding row number only: no path from a request is ever opened.
"""

from __future__ import annotations

import asyncio
import threading

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse

from edgecls.serve.errors import ApiError
from edgecls.serve.uploads import MULTIPART_SLACK, check_size, decode_image, image_files, label, read_form

MEDIA = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".bmp": "image/bmp",
         ".webp": "image/webp", ".tif": "image/tiff", ".tiff": "image/tiff"}  # fmt: skip


def add_search_routes(app: FastAPI, catalog, embedder, settings, decode_pool) -> None:
    """Register /search and /catalog/image/{row} on `app` for `catalog` queried with `embedder`."""
    lock = threading.Lock()  # one forward at a time (the torch runner is not thread-safe)
    index = catalog.index()
    count = len(catalog.embeddings.paths)
    most = max(1, min(100, count))

    def parse_topk(raw: str | None) -> int:
        if raw is None or raw == "":
            return min(settings.default_topk, most)
        try:
            k = int(raw)
        except ValueError:
            raise ApiError(400, f"topk={raw!r} is not an integer; use 1..{most}") from None
        if k < 1:
            raise ApiError(400, f"topk={k} must be at least 1; use 1..{most}")
        return min(k, most)

    def run(data: bytes, name: str, k: int) -> dict:
        check_size(data, name=name, max_bytes=settings.max_upload_bytes)
        array = embedder.preprocess_image(decode_image(data, name=name, max_pixels=settings.max_pixels))
        with lock:
            vec = embedder.predict_arrays(array[None])
        return catalog.search(vec, k, index)[0]

    @app.post("/search", tags=["catalog"], summary="Nearest catalog products and images of one image")
    async def search(request: Request, topk: str | None = None):
        """Multipart field `img`: one image. `?topk=` products and nearest images (default 5)."""
        k = parse_topk(topk)
        form = await read_form(
            request,
            max_body=settings.max_upload_bytes + MULTIPART_SLACK,
            max_files=2,
            what="per image",
            too_many=ApiError(400, "/search takes one image in field 'img' but got more"),
        )
        try:
            files = image_files(form)
            if len(files) > 1:
                raise ApiError(400, f"/search takes one image in field 'img' but got {len(files)}")
            data = await files[0].read()
            name = f"img {label(files[0])}"
        finally:
            await form.close()
        result = await asyncio.get_running_loop().run_in_executor(decode_pool, run, data, name, k)
        row_of_path = {p: i for i, p in enumerate(catalog.embeddings.paths)}
        nearest = []
        for score, product, path in result["nearest"]:
            row = row_of_path[path]
            nearest.append({"product": product, "score": score, "image": row, "url": f"/catalog/image/{row}"})
        products = [{"product": p, "score": s} for s, p in result["products"]]
        return JSONResponse({"success": True, "products": products, "nearest": nearest})

    @app.get("/catalog/image/{row}", tags=["catalog"], summary="A catalog image (thumbnail) by its number")
    async def catalog_image(row: str):
        if not row.isdigit() or int(row) >= count:
            raise ApiError(404, f"no catalog image {row!r}; images are numbered 0..{count - 1}")
        path = catalog.image_file(int(row))
        if not path.is_file():
            raise ApiError(404, f"catalog image {row} is missing from the catalog folder")
        return FileResponse(path, media_type=MEDIA.get(path.suffix.lower(), "application/octet-stream"))

    @app.get("/catalog", tags=["catalog"], summary="The catalog's products and size")
    async def catalog_info():
        return {"success": True, "products": catalog.products, "images": count, "index": index.kind}
