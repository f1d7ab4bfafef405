"""The storage engine: plain synchronous data structures, no trio."""
