"""``skintriage bench``: latency, throughput, ONNX, training and scaling benchmarks (see ``suite``).

One job per module: ``references`` (the plain implementations we compare against), ``samples`` (real or
generated images), ``inference``, ``training``, ``scaling`` (the sections), ``report`` (JSON, markdown, plot)
and ``suite`` (what runs). The timing primitives (warm-up, repeats, medians, alternating candidates) are the
library's :mod:`skintriage.common.timing`, which the ``auto`` backend choice uses too: the benchmarks import the
library, never the reverse.
"""
