"""Pages that load without console errors (the browser tests check it).

- sphinx-thebe adds its inline configuration script each time the environment is read, and a
  jupyter-book build reads it more than once, so every page declared ``const THEBE_JS_URL``
  twice: a SyntaxError in the console. Repeated scripts are dropped from each page.
- pydata-sphinx-theme logs an error when the book sets no colour mode and falls back to "auto";
  "auto" (the reader's system setting) is set explicitly.
"""


def drop_repeated_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not isinstance(scripts, list):
        return
    seen, unique = [], []
    for script in scripts:
        # The same file or inline body (an inline script's filename is None or ""), whatever
        # priority each registration gave it.
        key = (getattr(script, "filename", script) or "", getattr(script, "attributes", {}))
        if key not in seen:
            seen.append(key)
            unique.append(script)
    scripts[:] = unique


def set_colour_mode(app, config):
    config.html_context.setdefault("default_mode", "auto")


def setup(app):
    app.connect("config-inited", set_colour_mode)
    app.connect("html-page-context", drop_repeated_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
