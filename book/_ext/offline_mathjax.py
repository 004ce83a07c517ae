"""Serve MathJax 3 from the built book instead of a CDN, so equations render offline too.

The files come from the PyPI package `django-static-mathjax` (a plain redistribution of
MathJax 3.2.2, Apache-2.0, importable as `mathjax`). `_config.yml` points `mathjax_path` at the
copy made here.
"""
import shutil
from pathlib import Path

# The combined TeX→CommonHTML component, its fonts, and what it loads on demand.
PARTS = ["tex-chtml.js", "output/chtml/fonts/woff-v2", "input/tex/extensions", "ui", "a11y"]


def copy_mathjax(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    import mathjax

    source = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    target = Path(app.outdir) / "_static" / "mathjax"
    for part in PARTS:
        if (source / part).is_dir():
            shutil.copytree(source / part, target / part, dirs_exist_ok=True)
        else:
            (target / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / part, target / part)


def setup(app):
    app.connect("build-finished", copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
