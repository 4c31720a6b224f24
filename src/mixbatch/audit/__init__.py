"""What a run really fed the model: the audit log and the reports built from it."""

from mixbatch.audit.log import AuditWriter, read_audit_log, rows_of, summary_path

__all__ = ["AuditWriter", "read_audit_log", "rows_of", "summary_path"]
