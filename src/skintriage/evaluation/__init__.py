"""Step 5, measuring a bundle on a labelled manifest: ``evaluate`` (predictions and metrics with bootstrap
confidence intervals), ``result`` (the typed record both the report and training use) and ``report``
(markdown tables and plots).
"""
