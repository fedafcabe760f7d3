"""The web view: server-rendered pages (Jinja2), a little plain JS for the live parts (SSE)."""
