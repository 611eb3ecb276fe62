"""Internal error types and their one mapping to gRPC status codes.

Service code raises these; the server bootstrap's interceptor turns them into the
matching status with the message unchanged, so a message should say what to fix.
"""

from __future__ import annotations

import grpc


class CirError(Exception):
    """Base of every error a service reports to its caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    # When set, the server sends it as a retry hint in the trailers (x-cir-retry-after-ms, and
    # grpc-retry-pushback-ms, which gRPC clients with a retry policy wait for before retrying).
    retry_after_ms: int | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(CirError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(CirError):
    code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(CirError):
    """A limit of the server; with `retry_after_ms` a temporary one (busy), which a retry may pass."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, *, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class FailedPrecondition(CirError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(CirError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(CirError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(CirError):
    """No credential, or one the server does not know."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(CirError):
    """A known caller asking for something its role does not allow."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ConfigError(CirError):
    """Bad configuration found at start-up; not raised while serving."""

    code = grpc.StatusCode.FAILED_PRECONDITION


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and message a caller should see for `error`."""
    if isinstance(error, CirError):
        return error.code, error.message
    if isinstance(error, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "the operation ran past its deadline"
    if isinstance(error, grpc.aio.AioRpcError):
        # A downstream call failed: pass its status on, naming it as downstream.
        return error.code(), f"downstream call failed: {error.details()}"
    return grpc.StatusCode.INTERNAL, f"internal error ({type(error).__name__}); see the server log"
