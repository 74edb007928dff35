"""Generators: one subpackage per kind of data, each registering its stages by `kind:`."""
