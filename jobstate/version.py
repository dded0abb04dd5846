"""The algorithm version: part of every result-cache key."""

# Bump when a change alters any number a report holds: the result cache keys on it.
# 2: sets with more than 1,000 classes list the 1,000 largest per class; solve blocks are
#    chosen from the job's memory budget.
ALGORITHM_VERSION = "2"
