"""Errors a client can cause, each carrying its HTTP status and a stable code."""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 500
    code = "internal"

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ServiceError):
    status_code = 400
    code = "bad_request"


class InvalidImage(BadRequest):
    code = "invalid_image"


class WrongTask(BadRequest):
    code = "wrong_task"


class Unauthorized(ServiceError):
    """401: no valid API key (service/auth.py); the challenge says how to send one."""

    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="kerve"'})


class RequestTimeout(ServiceError):
    """408: the request's head or body did not arrive in time (service/connections.py)."""

    status_code = 408
    code = "request_timeout"


class HeadersTooLarge(ServiceError):
    """431: the request line and headers exceed SERVE_MAX_HEADER_BYTES."""

    status_code = 431
    code = "headers_too_large"


class ModelNotFound(ServiceError):
    status_code = 404
    code = "model_not_found"


class VersionNotFound(ServiceError):
    status_code = 404
    code = "version_not_found"


class PayloadTooLarge(ServiceError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status_code = 415
    code = "unsupported_media_type"


class ClientDisconnected(ServiceError):
    """499 (nginx's convention): the client hung up; nobody reads this response."""

    status_code = 499
    code = "client_disconnected"


class Unavailable(ServiceError):
    """503: the client should retry later, as Retry-After says."""

    status_code = 503
    code = "unavailable"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class Overloaded(Unavailable):
    code = "overloaded"


class NotReady(Unavailable):
    code = "not_ready"


class InferenceFailed(ServiceError):
    """500: the model raised; the message names the error type, never a traceback."""

    code = "inference_failed"


class DeadlineExceeded(ServiceError):
    status_code = 504
    code = "deadline_exceeded"


def error_body(code: str, message: str, protocol: bool = False) -> dict:
    """Kerve's error document; the standard protocols' own, ``{"error": message}``, for
    their routes (``protocol``)."""
    return {"error": message} if protocol else {"error": {"code": code, "message": message}}
