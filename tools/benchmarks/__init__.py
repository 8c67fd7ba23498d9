"""The benchmarks behind ``tools/benchmark.py``, one module per subcommand.

Each subcommand module has ``add_arguments(parser)`` (its own options) and ``run(args)`` (its list
of ``{"name", "value", "unit"}`` records); all of them time through :mod:`benchmarks.timing`. They
are run only through ``tools/benchmark.py SUBCOMMAND`` and import nothing of it.
"""
