"""Benchmarks, apart from the library's core (nothing in lib imports them):

    throughput   `make bench`: images/s of the original's loop, the workbook's, and the model alone
    scale        `make bench-scale`: cache build, decode rate, memory and an epoch on PatchCamelyon-sized sets
"""
