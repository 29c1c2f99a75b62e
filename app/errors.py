"""The domain's errors: what a service function raises when it refuses a request.

    ServiceError                 every refusal; ``code`` is the GraphQL ``extensions.code``
     ├── Unauthenticated         no token, or one that failed validation
     ├── Forbidden               a valid token without the scope or for another account
     ├── BadUserInput            one or more fields break the contract (``errors``: every one)
     ├── NotFound                the thing asked for does not exist
     ├── Conflict                the request clashes with what is stored (``extensions``)
     ├── RateLimited             too many requests from one caller (``retry_after`` seconds)
     └── SlowConsumer            a subscriber fell too far behind (``resume_after`` cursor)

Service code never imports the GraphQL layer; ``app.api.errors`` maps these to the response
shape in one place, and anything that is not a ``ServiceError`` is an internal error there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


class ServiceError(Exception):
    code = "INTERNAL_SERVER_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def extensions(self) -> dict[str, Any]:
        """Extra members of ``extensions`` besides ``code``."""
        return {}


class Unauthenticated(ServiceError):
    code = "UNAUTHENTICATED"


class Forbidden(ServiceError):
    code = "FORBIDDEN"


class NotFound(ServiceError):
    code = "NOT_FOUND"


class BadUserInput(ServiceError):
    code = "BAD_USER_INPUT"

    def __init__(self, errors: list[FieldError]) -> None:
        fields = ", ".join(error.field for error in errors)
        super().__init__(f"Invalid input: {fields}")
        self.errors = errors

    @property
    def extensions(self) -> dict[str, Any]:
        return {"errors": [{"field": e.field, "message": e.message} for e in self.errors]}


class Conflict(ServiceError):
    code = "CONFLICT"

    def __init__(self, message: str, **extensions: Any) -> None:
        super().__init__(message)
        self._extensions = extensions

    @property
    def extensions(self) -> dict[str, Any]:
        return dict(self._extensions)


class RateLimited(ServiceError):
    code = "RATE_LIMITED"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def extensions(self) -> dict[str, Any]:
        return {"retryAfter": self.retry_after}


class SlowConsumer(ServiceError):
    """A subscription's buffer overflowed: the client reads slower than events arrive.

    It ends the subscription; the client resubscribes with ``after`` set to the cursor of the
    last event it received (``resumeAfter``) and misses nothing.
    """

    code = "RATE_LIMITED"

    def __init__(self, resume_after: str) -> None:
        super().__init__(
            "this subscription fell too far behind and was ended; subscribe again with "
            "`after` set to the cursor of the last event received (extensions.resumeAfter)"
        )
        self.resume_after = resume_after

    @property
    def extensions(self) -> dict[str, Any]:
        return {"resumeAfter": self.resume_after}
