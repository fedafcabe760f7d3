"""The coordinator room: the store, the scheduler, groups, the barrier, results."""
