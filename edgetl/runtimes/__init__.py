"""Runtimes: one small module per backend behind one interface (see base.py)."""
