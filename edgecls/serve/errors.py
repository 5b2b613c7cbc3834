"""API errors: every failure is JSON `{"success": false, "error": "<what is wrong and how to fix it>"}`."""

from __future__ import annotations

from fastapi.responses import JSONResponse


class ApiError(Exception):
    """A client mistake with its HTTP status (4xx) and a message that says how to fix it."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"success": False, "error": message}, status_code=status, headers=headers)
