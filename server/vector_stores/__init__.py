"""Vector stores (issue #37): parsing, chunking, filters, the hybrid index, the store service."""
