"""Thin routers: take the service from app.state, call it, return JSON or SSE."""
