"""Thin Ray actor shells around the core in ``astr_ray``.

Each actor holds a core object, owns its lifecycle (start / ready / stop) and turns
method calls into messages. Logic lives in ``astr_ray``; see ARCHITECTURE.md.
"""
