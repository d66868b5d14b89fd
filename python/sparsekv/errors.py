"""The exceptions: one class per status code, all subclasses of SparsekvError."""
from __future__ import annotations

from typing import Optional

from . import _lib


class SparsekvError(Exception):
    """A failed sparsekv call: ``code`` is the status code number, ``message`` the daemon's words."""

    code = 2

    def __init__(self, message: str, code: Optional[int] = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class Cancelled(SparsekvError): code = 1
class Unknown(SparsekvError): code = 2
class InvalidArgument(SparsekvError, ValueError): code = 3
class DeadlineExceeded(SparsekvError, TimeoutError): code = 4
class NotFound(SparsekvError, KeyError): code = 5
class AlreadyExists(SparsekvError): code = 6
class PermissionDenied(SparsekvError, PermissionError): code = 7
class ResourceExhausted(SparsekvError, MemoryError): code = 8
class FailedPrecondition(SparsekvError): code = 9
class Aborted(SparsekvError): code = 10
class OutOfRange(SparsekvError, IndexError): code = 11
class Unimplemented(SparsekvError, NotImplementedError): code = 12
class Internal(SparsekvError): code = 13
class Unavailable(SparsekvError, ConnectionError): code = 14
class DataLoss(SparsekvError): code = 15
class Unauthenticated(SparsekvError): code = 16


_BY_CODE = {cls.code: cls for cls in (Cancelled, Unknown, InvalidArgument, DeadlineExceeded, NotFound, AlreadyExists,
                                      PermissionDenied, ResourceExhausted, FailedPrecondition, Aborted, OutOfRange,
                                      Unimplemented, Internal, Unavailable, DataLoss, Unauthenticated)}

# KeyError's str() quotes its argument; ours read like the others.
NotFound.__str__ = lambda self: self.message  # type: ignore[assignment]


def _check(code: int) -> None:
    if code != 0:
        raise _BY_CODE.get(code, SparsekvError)(_lib.last_error(), code)
