"""Edit data sets: one record type, readers for the public KnowEdit / MEND layouts."""

from .knowedit import RecordError, first_answer, load_edit_records, parse_records
from .records import TASKS, EditCase, Probe

__all__ = ["TASKS", "EditCase", "Probe", "RecordError", "first_answer", "load_edit_records",
           "parse_records"]
