"""Services: the work behind each route, free of HTTP."""
