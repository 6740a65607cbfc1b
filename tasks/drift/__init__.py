"""Drift: the traffic window, input and quality statistics, and the drift report."""
