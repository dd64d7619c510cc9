"""What is measured per row (rating probabilities, losses, a teacher's rewrites), found in the store or computed.

`base.py` says what a measure is; each measure has its file; `measurer.py` finds or computes any of them.
"""
