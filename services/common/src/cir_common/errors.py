"""Internal error types and their one mapping to gRPC status codes.

Service code raises these; the server bootstrap's interceptor turns them into the
matching status with the message unchanged, so a message should say what to fix.
"""

from __future__ import annotations

import grpc


class CirError(Exception):
    """Base of every error a service reports to its caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(CirError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(CirError):
    code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(CirError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(CirError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(CirError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(CirError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


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
