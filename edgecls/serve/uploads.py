"""Read multipart uploads without holding more than the size limit, and decode images defensively.

The byte limit is enforced twice: a declared Content-Length over the limit is refused before
the body is read, and the bytes actually received are counted while the multipart parser
consumes the stream (chunked uploads have no Content-Length). An over-size body is read and
discarded up to DRAIN_BYTES so the client, still sending, gets to read the 413; past that the
connection is closed.
"""

from __future__ import annotations

import io

from PIL import Image
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request

from edgecls.data.images import load_rgb_bytes
from edgecls.serve.errors import ApiError

MULTIPART_SLACK = 64 * 1024  # part headers and boundaries on top of the files themselves
DRAIN_BYTES = 32 * 1024 * 1024
MAX_TEXT_FIELD = 64 * 1024
IMAGE_HINT = "upload a JPEG, PNG, BMP, WebP or TIFF file"


def mib(n: int) -> str:
    return f"{n / (1024 * 1024):.3g} MiB"


class _BodyTooLarge(Exception):
    pass


async def _drain(request: Request, budget: int) -> bool:
    """Read and discard the rest of the body, at most `budget` bytes; True if it was all read."""
    while budget > 0:
        message = await request.receive()
        if message["type"] != "http.request":
            return False
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return True
    return False


def _too_large(limit: int, what: str) -> str:
    return (
        f"request body is larger than the server's limit of {mib(limit)} {what}; send a smaller image "
        "(or start the server with a larger --max-upload-mb)"
    )


async def read_form(
    request: Request, *, max_body: int, max_files: int, what: str, too_many: ApiError | None = None
) -> FormData:
    """Parse a multipart/form-data body of at most `max_body` bytes; ApiError (413/415/400) otherwise.
    More than `max_files` files raises `too_many` (the endpoint's own message) when given."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise ApiError(
            415,
            f"send the image as multipart/form-data with the file in field 'img' "
            f"(got Content-Type {content_type or 'none'!r}); e.g. curl -F img=@photo.jpg URL",
        )
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            declared_bytes = int(declared)
        except ValueError:
            raise ApiError(400, f"bad Content-Length header {declared!r}") from None
        if declared_bytes > max_body:
            expects_continue = request.headers.get("expect", "").lower() == "100-continue"
            drained = not expects_continue and declared_bytes <= DRAIN_BYTES and await _drain(request, DRAIN_BYTES)
            raise ApiError(413, _too_large(max_body, what), headers=None if drained else {"Connection": "close"})

    state = {"received": 0, "more": True}

    async def counting_receive():
        message = await request.receive()
        if message["type"] == "http.request":
            state["received"] += len(message.get("body", b""))
            state["more"] = message.get("more_body", False)
            if state["received"] > max_body:
                raise _BodyTooLarge
        return message

    limited = Request(request.scope, counting_receive)
    try:
        return await limited.form(max_files=max_files, max_fields=16, max_part_size=MAX_TEXT_FIELD)
    except _BodyTooLarge:
        drained = not state["more"] or await _drain(request, DRAIN_BYTES)
        raise ApiError(413, _too_large(max_body, what), headers=None if drained else {"Connection": "close"}) from None
    except HTTPException as exc:  # starlette's MultiPartException, re-raised as a 400
        if too_many is not None and str(exc.detail).startswith("Too many files"):
            raise too_many from None
        raise ApiError(400, f"malformed multipart/form-data body: {exc.detail}") from None
    except ClientDisconnect:
        raise ApiError(400, "the client disconnected before the upload was complete") from None


def image_files(form: FormData, field: str = "img") -> list[UploadFile]:
    """The uploaded files in `field`; ApiError naming the fields that were sent when it is missing or text."""
    values = form.getlist(field)
    if not values:
        sent = sorted(set(form.keys()))
        got = f"the request has fields {sent}" if sent else "the request has no fields"
        raise ApiError(400, f"missing multipart file field '{field}' ({got}); e.g. curl -F {field}=@photo.jpg URL")
    for value in values:
        if not isinstance(value, UploadFile):
            raise ApiError(
                400,
                f"field '{field}' must be a file upload, not a text value; "
                f"e.g. curl -F {field}=@photo.jpg URL (note the @)",
            )
    return values


def label(upload: UploadFile) -> str:
    return repr(upload.filename) if upload.filename else "the upload"


def decode_image(data: bytes, *, name: str, max_pixels: int) -> Image.Image:
    """Bytes -> upright RGB image; ApiError 400 (empty, not an image, corrupt) or 413 (too many pixels).

    The pixel count is read from the header before anything is decoded, so a small file that
    would expand to gigabytes (a pixel bomb) costs nothing.
    """
    if not data:
        raise ApiError(400, f"{name} is empty (0 bytes); {IMAGE_HINT}")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
    except Image.DecompressionBombError:
        raise ApiError(
            413, f"{name} has too many pixels (a decompression bomb?); the limit is {max_pixels:,}"
        ) from None
    except Image.UnidentifiedImageError:
        raise ApiError(400, f"{name} is not an image (unrecognized format); {IMAGE_HINT}") from None
    except Exception as exc:  # any decoder failure on untrusted bytes is the client's problem, not a crash
        raise ApiError(400, f"{name} could not be read as an image ({_short(exc)}); {IMAGE_HINT}") from None
    if width * height > max_pixels:
        raise ApiError(
            413,
            f"{name} is {width}x{height} = {width * height:,} pixels, over the server's limit of "
            f"{max_pixels:,}; downscale it (or start the server with a larger --max-pixels)",
        )
    try:
        return load_rgb_bytes(data)
    except Exception as exc:  # truncated / corrupt data: PIL raises OSError, ValueError, SyntaxError, ...
        raise ApiError(400, f"{name} is corrupt or truncated ({_short(exc)}); {IMAGE_HINT}") from None


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def check_size(data: bytes, *, name: str, max_bytes: int) -> None:
    if len(data) > max_bytes:
        raise ApiError(
            413,
            f"{name} is {mib(len(data))}, over the server's limit of {mib(max_bytes)} per image; "
            "send a smaller image (or start the server with a larger --max-upload-mb)",
        )
