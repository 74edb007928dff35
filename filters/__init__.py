"""Filters: stages that score records and mark the ones to drop, never deleting them silently."""
