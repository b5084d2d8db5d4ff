"""Planning: scaling laws, the planner, pilot sweeps and calibration.

It sits above training: sweeps and calibration run the trainer.
"""
