"""``skintriage bench``: latency, throughput, ONNX, training and scaling benchmarks (see ``suite``).

One job per module: ``timing`` (warm-up, repeats, medians, alternating candidates), ``references`` (the
plain implementations we compare against), ``samples`` (real or generated images), ``inference``,
``training``, ``scaling`` (the sections), ``report`` (JSON, markdown, plot) and ``suite`` (what runs).
"""
