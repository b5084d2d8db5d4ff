"""Cost accounting: FLOP counting (fvcore) and device peaks.

The bottom of the training stack: models, objectives and the trainer use it; it uses none of them.
"""
