"""Robustness: SIGKILL-and-resume bit for bit, and hours-long memory and epoch-time stability."""
