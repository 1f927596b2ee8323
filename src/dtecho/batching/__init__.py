"""Micro-batching: concurrent requests executed as one vectorised call."""
