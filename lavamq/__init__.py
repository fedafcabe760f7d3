"""The ``lavamq`` command line: services, jobs, results, logs and local runs."""
