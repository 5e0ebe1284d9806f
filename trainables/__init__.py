"""Thin Ray Tune entry points around ckd_search.engine.fit."""
