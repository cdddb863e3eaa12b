"""Step 3, from class probabilities to a referral level: temperature calibration and thresholds
(``calibration``), out-of-distribution gates (``uncertainty``), the photo-type head (``acquisition``), the
referral rules as data (``referral``) and the cited work-up guidance (``guidance``).

The referral rules and guidance are pure: importing them loads neither torch nor scikit-learn.
"""
