"""Read-only views of a model: the report, the audit, and what a `.keras` file stores."""
