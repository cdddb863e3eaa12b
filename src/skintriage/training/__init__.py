"""Step 6, producing a bundle: the run configuration (``config``), the data it trains on (``data``), the
training loop (``loop``) with its typed resume state (``state``), schedule and parameter groups (``optim``)
and class weights (``imbalance``); after the loop, calibration, class call, gates, bundle and evaluation
(``finish``, ``gates``); and the multi-process launcher (``distributed``).
"""
