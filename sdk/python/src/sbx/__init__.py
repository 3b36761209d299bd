"""sbx: Python SDK for self-hosted sbx sandboxes.

    from sbx import Sandbox

    with Sandbox.create() as sbx:
        print(sbx.commands.run("echo hello").stdout)
"""

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    APIError,
    AuthenticationError,
    BadRequestError,
    CommandError,
    ConflictError,
    CopyError,
    ImageImportError,
    ImageNotFoundError,
    NotFoundError,
    PermissionDeniedError,
    SandboxError,
    SandboxFileNotFoundError,
    SandboxNotFoundError,
    SbxConnectionError,
    SbxError,
    SbxTimeoutError,
    ServerError,
    SnapshotError,
    SnapshotNotFoundError,
    ValidationError,
)
from .models import (  # noqa: E402
    CheckpointType,
    CommandResult,
    CopyResult,
    FileEntry,
    ImageInfo,
    NetworkPolicy,
    OutputLine,
    ProcessInfo,
    ProcessStatus,
    PtySessionInfo,
    Resources,
    SandboxInfo,
    SandboxStatus,
    SnapshotInfo,
    SnapshotStatus,
    SnapshotType,
)
from .client import SandboxClient  # noqa: E402
from .sandbox import Sandbox, PtySession  # noqa: E402
from .aio import AsyncSandbox, AsyncSandboxClient, AsyncPtySession  # noqa: E402

__all__ = [
    "__version__",
    "SandboxClient",
    "Sandbox",
    "PtySession",
    "AsyncSandboxClient",
    "AsyncSandbox",
    "AsyncPtySession",
    "SandboxInfo",
    "SandboxStatus",
    "SnapshotInfo",
    "SnapshotStatus",
    "SnapshotType",
    "CheckpointType",
    "ImageInfo",
    "CommandResult",
    "CopyResult",
    "FileEntry",
    "NetworkPolicy",
    "OutputLine",
    "ProcessInfo",
    "ProcessStatus",
    "PtySessionInfo",
    "Resources",
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
    "CommandError",
    "CopyError",
]
