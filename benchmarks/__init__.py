"""willow's benchmark suite: Willump-style workloads on the real data shipped in data/.

Run ``python -m benchmarks --quick`` (or ``python -m benchmarks --help``). Each workload module
(toxic, product, music, credit, price) is an ordinary ``@willow.optimize`` pipeline with its own
training code; :mod:`benchmarks.run` calibrates and measures the variants of :mod:`benchmarks.variants`,
:mod:`benchmarks.report` and :mod:`benchmarks.plots` write the results.
"""
