"""The HTTP layer: app factory, middleware, routes and the error mapping."""
