"""The algorithm version: part of every result-cache key."""

# Bump when a change alters any number a report holds: the result cache keys on it.
# 2: sets with more than 1,000 classes list the 1,000 largest per class; solve blocks are
#    chosen from the job's memory budget.
# 3: the worker draws the report page and stores it with the result; results made before
#    have no page, and the cache must not answer with one of them.
# 4: knn="auto" is the default (approximate from 200,000 points), approximate search is
#    an IVF-Flat index instead of HNSW, and exact search reports recall 1.0.
# 5: a job of several sets of the same points reports comparison.overlap_consecutive (the
#    mean Jaccard overlap of consecutive sets' NNK neighbourhoods); older cached reports
#    lack it.
# 6: exact search runs on tiles of the Gram matrix (workers/geometry/gram_search.py):
#    candidates whose float32 scores are equal come in index order, where faiss left
#    their order unspecified, and that order can change the last bits of a weight.
ALGORITHM_VERSION = "6"
