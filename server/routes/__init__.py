"""Thin routers: take the service from the app's typed services (server/state.py), call it, return JSON or SSE."""
