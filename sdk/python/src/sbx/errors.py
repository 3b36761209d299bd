"""Exceptions raised by the SDK.

Every error the server answers carries the HTTP ``status`` and the ``code`` and
``message`` of its JSON body ``{"code": ..., "message": ...}``.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Optional

__all__ = [
    "SbxError",
    "APIError",
    "BadRequestError",
    "ValidationError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "SandboxNotFoundError",
    "SnapshotNotFoundError",
    "ImageNotFoundError",
    "SandboxFileNotFoundError",
    "ConflictError",
    "ServerError",
    "SbxConnectionError",
    "SbxTimeoutError",
    "SandboxError",
    "SnapshotError",
    "ImageImportError",
    "ImageBuildError",
    "CommandError",
    "CopyError",
]


class SbxError(Exception):
    """Base class of every SDK error."""

    def __init__(
        self,
        message: str,
        *,
        status: Optional[int] = None,
        code: Optional[str] = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.body = body

    def __str__(self) -> str:
        parts = []
        if self.status is not None:
            parts.append(str(self.status))
        if self.code:
            parts.append(self.code)
        prefix = " ".join(parts)
        return f"{prefix}: {self.message}" if prefix else self.message


class APIError(SbxError):
    """A non-2xx answer from the server (base of the status-specific errors)."""


class BadRequestError(APIError):
    """400: the request was invalid (bad resources, unknown field values, ...)."""


ValidationError = BadRequestError


class AuthenticationError(APIError):
    """401: missing or wrong API key."""


class PermissionDeniedError(APIError):
    """403: the key (or PTY token) is not allowed to do this."""


class NotFoundError(APIError):
    """404: the addressed object does not exist."""


class SandboxNotFoundError(NotFoundError):
    """404 on a sandbox route: no sandbox with that id or name."""


class SnapshotNotFoundError(NotFoundError):
    """404 on a snapshot route."""


class ImageNotFoundError(NotFoundError):
    """404 on an image route: no image of that name, or (on an import) no
    such image in the registry."""


class PoolNotFoundError(NotFoundError):
    """404 on a sandbox-pool route: no pool with that id."""


class SandboxFileNotFoundError(NotFoundError, FileNotFoundError):
    """404 on a file route: the path does not exist inside the sandbox."""

    def __str__(self) -> str:  # OSError has its own __str__
        return SbxError.__str__(self)


class ConflictError(APIError):
    """409: name taken, sandbox not in a state that allows the call, ..."""


class ServerError(APIError):
    """5xx: the server failed (for example 503 when a sandbox failed to start)."""


class SbxConnectionError(SbxError, ConnectionError):
    """The server could not be reached (after retries for idempotent calls)."""


class SbxTimeoutError(SbxError, TimeoutError):
    """A wait (sandbox start, suspend/resume, snapshot) did not finish in time."""


class SandboxError(SbxError):
    """A sandbox ended up failed or terminated while the SDK waited for it."""


class SnapshotError(SbxError):
    """A snapshot failed (or was deleted) while the SDK waited for it."""


class ImageImportError(SbxError):
    """An image import failed after the server accepted it (its progress
    stream ended in an error, or without the image)."""


class ImageBuildError(SbxError):
    """An image build failed after the server accepted it: a step failed
    (the message names its Dockerfile line and ends with the last lines the
    step printed; ``output`` has them all) or the answer ended without the
    image. A Dockerfile the server refuses at once is a :class:`BadRequestError`."""

    def __init__(self, message: str, *, output: Iterable[str] = (), **kw: Any) -> None:
        self.output = list(output)
        tail = "\n".join(self.output[-5:])
        super().__init__(f"{message}\n{tail}" if tail else message, **kw)


class CommandError(SbxError):
    """Raised by ``commands.run(..., check=True)`` when the command did not exit 0."""

    def __init__(self, result: Any) -> None:
        what = (
            f"exit code {result.exit_code}"
            if result.exit_code is not None
            else f"{result.reason} (signal {result.signal})"
        )
        tail = result.stderr.strip().splitlines()[-5:]
        message = f"command failed with {what}" + (": " + "\n".join(tail) if tail else "")
        super().__init__(message)
        self.result = result


class CopyError(APIError):
    """A copy made fewer sandboxes than asked; ``result`` holds those that started."""

    def __init__(self, message: str, *, result: Any, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.result = result


_BY_STATUS = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: BadRequestError,
}


def error_from_response(
    status: int, content: bytes, not_found: type[NotFoundError] = NotFoundError
) -> APIError:
    """Builds the exception for a non-2xx answer from its status and body."""
    body: Any = None
    code = None
    message = ""
    text = content.decode("utf-8", "replace").strip()
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = body.get("code") if isinstance(body.get("code"), str) else None
        message = str(body.get("message") or body.get("error") or "")
    if not message:
        message = text or f"HTTP {status}"
    if status == 404:
        cls: type[APIError] = not_found
    elif status >= 500:
        cls = ServerError
    else:
        cls = _BY_STATUS.get(status, APIError)
    return cls(message, status=status, code=code, body=body if body is not None else text)
