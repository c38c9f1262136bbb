"""INT8 calibration sets and explicit (Q/DQ) quantisation of the edge encoder (`python -m calibration --help`)."""
