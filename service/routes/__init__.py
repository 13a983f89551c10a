"""Thin FastAPI routers: parse the request, call a runtime, shape the response."""
