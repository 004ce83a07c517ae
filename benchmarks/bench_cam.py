"""Benchmark rows for the cam chapter: filled in by that chapter."""


def rows(model, image, repeats):
    return []
