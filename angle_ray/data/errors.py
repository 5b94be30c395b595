"""The one error type for bad input data: it says which file, which row, which field and why.

    DataError("stsb/train.jsonl", 17, "label", "NaN label")
    -> stsb/train.jsonl line 17, field 'label': NaN label

Row numbers follow the file: for text files (JSONL, CSV, TSV, SemEval, BEIR) ``row`` is the
1-based physical line (a CSV header is line 1); for Parquet files and ``datasets`` folders it is
the 0-based row index, and the message says "row N (0-based)". ``unit`` tells the two apart.
The error pickles with all its attributes, so Ray can ship it from a worker to the driver.
"""

from __future__ import annotations

from angle_ray.errors import UserError

LINE = "line"  # 1-based physical line of a text file
ROW = "row"  # 0-based row index of a columnar file / datasets folder


def format_location(file: str, row: int | None, unit: str = LINE) -> str:
    """`file line N` / `file row N (0-based)` / `file` (when the row is unknown)."""
    if row is None:
        return str(file)
    if unit == ROW:
        return f"{file} row {row} (0-based)"
    return f"{file} line {row}"


class DataError(UserError):
    """A row (or file) of input data that cannot be used."""

    def __init__(
        self,
        file: str,
        row: int | None,
        field: str | None,
        reason: str,
        unit: str = LINE,
    ) -> None:
        self.file = str(file)
        self.row = row
        self.field = field
        self.reason = reason
        self.unit = unit
        super().__init__(self._message())

    @property
    def location(self) -> str:
        return format_location(self.file, self.row, self.unit)

    def _message(self) -> str:
        where = self.location
        if self.field is not None:
            where += f", field {self.field!r}"
        return f"{where}: {self.reason}"

    def __str__(self) -> str:
        return self._message()

    def __reduce__(self):
        return (type(self), (self.file, self.row, self.field, self.reason, self.unit))
