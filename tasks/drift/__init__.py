"""Drift: the traffic window, input statistics, the canary, live quality, and the drift report."""
