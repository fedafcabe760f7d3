"""The actions a sub-job's pipeline is built from (one module per kind)."""
