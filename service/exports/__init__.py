"""Whole-resource downloads (a job's labels, a manifest's entries) streamed as JSONL or Parquet,
a page at a time, in their own session: a streaming response outlives the request's session."""
