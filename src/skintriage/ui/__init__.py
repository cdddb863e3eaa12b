"""What the demo shows: the referral card HTML (``cards``) and the labelled example photos (``examples``).

``app.py`` only wires Gradio widgets to these and to the predictor.
"""
