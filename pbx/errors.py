"""What can go wrong talking to a PBX, as types a caller can act on.

Texts carry the PBX's own messages and the request's method and path, never a
request body, a header or a secret.
"""

from __future__ import annotations


class PbxError(Exception):
    """Any failure talking to the PBX.

    `refused_before_save` is True only for answers that prove a write was not
    carried out: MikoPBX's validation and lookup refusals (its error envelope
    with 400/404/409/422), auth refusals (401/403), nginx's 429 (answered before
    PHP runs) and a connection that could not be opened. After any other error
    (5xx, a 2xx not in MikoPBX's shape, an HTML page, a dropped connection, a
    timeout) a write may have landed: read the record back and judge by it.
    """

    refused_before_save = False

    def __init__(self, message: str, *, status: int | None = None, messages: list[str] | None = None):
        super().__init__(message)
        self.status = status
        self.messages = messages or []


class PbxAuthError(PbxError):
    """401: the API key, the login or the JWT was refused (also: a key without permission)."""

    refused_before_save = True


class PbxForbidden(PbxAuthError):
    """403: authenticated, but the ACL or the firewall refuses this call."""


class PbxNotFound(PbxError):
    """404, or MikoPBX's `api_...NotFound` answers: the record or the endpoint does not exist."""

    refused_before_save = True


class PbxUnsupported(PbxError):
    """The PBX answers, but has no REST API v3 (MikoPBX older than 2026.1)."""


class PbxValidationError(PbxError):
    """422/400: MikoPBX refused the data. `field_errors` maps a field to its message."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        messages: list[str] | None = None,
        field_errors: dict[str, str] | None = None,
    ):
        super().__init__(message, status=status, messages=messages)
        self.field_errors = field_errors or {}

    refused_before_save = True


class PbxConflict(PbxError):
    """409: the change conflicts with the PBX's current state."""

    refused_before_save = True


class PbxUnavailable(PbxError):
    """The PBX cannot be reached or is overloaded (connection error, 5xx)."""


class PbxUnreachable(PbxUnavailable):
    """The connection could not be opened: nothing was sent."""

    refused_before_save = True


class PbxMalformed(PbxError):
    """The PBX answered something that is not MikoPBX's shape (an HTML page, a body
    with the wrong types). For a write the outcome is unknown: read back."""


class PbxRateLimited(PbxUnavailable):
    """429: over the PBX's request rate; `retry_after` seconds when the PBX said so."""

    def __init__(self, message: str, *, retry_after: float | None = None, status: int | None = 429):
        super().__init__(message, status=status)
        self.retry_after = retry_after

    refused_before_save = True


class PbxTimeout(PbxUnavailable):
    """No answer in time. For a write the outcome is unknown: read back before deciding."""
