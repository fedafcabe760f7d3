"""``python -m lavamq``: the ``lavamq`` command (benchmarks run it so, never from PATH)."""

from lavamq.cli import main

if __name__ == "__main__":
    main()
