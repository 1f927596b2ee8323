"""Route modules: thin translations between HTTP and services."""
