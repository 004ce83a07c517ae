"""Benchmark rows for the perturbation chapter: filled in by that chapter."""


def rows(model, image, repeats):
    return []
