"""The benchmarked systems, one module each, all behind :class:`bench.systems.base.System`.

Kept free of imports: Temporal's workflow sandbox re-imports the packages above its workflow module.
"""
