"""Starlette apps: the web chat API now, the dashboard console later."""
