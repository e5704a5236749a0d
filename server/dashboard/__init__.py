"""The web dashboard at /dashboard (server-rendered pages over the API's own services)."""
