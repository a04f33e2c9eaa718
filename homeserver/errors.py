"""Errors are values: handlers raise MatrixError and one place renders it as Matrix JSON."""

from __future__ import annotations

from typing import Any


class MatrixError(Exception):
    def __init__(self, status: int, errcode: str, error: str, **extra: Any) -> None:
        super().__init__(f"{status} {errcode}: {error}")
        self.status = status
        self.errcode = errcode
        self.error = error
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        return {"errcode": self.errcode, "error": self.error, **self.extra}


def forbidden(msg: str) -> MatrixError:
    return MatrixError(403, "M_FORBIDDEN", msg)


def not_found(msg: str) -> MatrixError:
    return MatrixError(404, "M_NOT_FOUND", msg)


def bad_json(msg: str) -> MatrixError:
    return MatrixError(400, "M_BAD_JSON", msg)


def invalid_param(msg: str) -> MatrixError:
    return MatrixError(400, "M_INVALID_PARAM", msg)


def missing_param(msg: str) -> MatrixError:
    return MatrixError(400, "M_MISSING_PARAM", msg)


def unrecognized(msg: str = "Unrecognized request") -> MatrixError:
    return MatrixError(404, "M_UNRECOGNIZED", msg)


def too_large(msg: str) -> MatrixError:
    return MatrixError(413, "M_TOO_LARGE", msg)


def limit_exceeded(retry_after_ms: int) -> MatrixError:
    return MatrixError(429, "M_LIMIT_EXCEEDED", "Too many requests", retry_after_ms=retry_after_ms)


class AuthRequired(MatrixError):
    """User-interactive authentication: 401 with the flows (and the error, once a stage failed)."""

    def __init__(self, flows: list[list[str]], session: str, completed: list[str] | None = None,
                 errcode: str | None = None, error: str | None = None) -> None:
        super().__init__(401, errcode or "", error or "Authentication required")
        self.flows = flows
        self.session = session
        self.completed = completed or []
        self.failed = errcode is not None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "flows": [{"stages": f} for f in self.flows],
            "params": {},
            "session": self.session,
        }
        if self.completed:
            out["completed"] = self.completed
        if self.failed:
            out["errcode"] = self.errcode
            out["error"] = self.error
        return out
