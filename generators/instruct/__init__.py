"""Instruction data: Self-Instruct bootstraps tasks from seeds, Evol-Instruct makes them harder.

The record schema both write is `generators.instruct.records.INSTRUCT_SCHEMA`.
"""
