"""var_keeper's benchmark: ``make bench`` (full) and ``make bench-smoke`` (CI). See run.py."""
