"""Training manifests: validate a request, address it by content, select its entries in SQL,
write it, read it back.

A manifest is immutable. Its ID is a sha256 over the canonical request, the classes, each job's
teacher and a digest of its labels, and each labeled dataset's size, so the same request gives
the same ID (and the same entries), and any new input gives a new one.
"""
