"""The algorithm version: part of every result-cache key."""

# Bump when a change alters any number a report holds: the result cache keys on it.
ALGORITHM_VERSION = "1"
