"""One exception type for bad input data, and the skip-or-raise policy shared by the data modules."""

from __future__ import annotations

import logging
from collections.abc import Sequence

__all__ = ["DataError", "raise_or_skip"]

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """Bad input data; the message names the case (when there is one) and the file or folder.

    Attributes:
        case_id: the case at fault, ``None`` for dataset-level problems (empty dataset, too few cases).
        path: the file or folder at fault.
        reason: what is wrong, without the case and path.
    """

    def __init__(self, case_id: str | None, path: str, reason: str) -> None:
        self.case_id = case_id
        self.path = str(path)
        self.reason = reason
        where = f"case {case_id!r}" if case_id is not None else "dataset"
        super().__init__(f"{where}: {reason}: {self.path}")

    def as_record(self) -> dict[str, str | None]:
        """JSON-ready record of the problem, as stored under ``"skipped"`` in a datalist."""
        return {"case_id": self.case_id, "file": self.path, "reason": self.reason}


def raise_or_skip(errors: Sequence[DataError], skip_bad_cases: bool) -> list[DataError]:
    """Raise for bad cases, or, when ``skip_bad_cases``, log every one of them and return them.

    Several errors are raised together as one ``DataError`` whose message lists each of them, so one
    run shows every bad case; its attributes are those of the first.
    """
    if not errors:
        return []
    if skip_bad_cases:
        for error in errors:
            logger.warning("skipping bad case: %s", error)
        return list(errors)
    if len(errors) == 1:
        raise errors[0]
    first = errors[0]
    listing = "\n".join(f"  - {error}" for error in errors)
    combined = DataError(first.case_id, first.path, first.reason)
    combined.args = (f"{len(errors)} bad cases (pass skip_bad_cases=True to skip them):\n{listing}",)
    raise combined
