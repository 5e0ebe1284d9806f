"""Reports that answer the switching question."""
