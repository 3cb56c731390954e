"""One row per call attempt: what was paid, what ran, what it cost; stats for creators and buyers."""
