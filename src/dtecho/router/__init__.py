"""The router: deployments per model, strategies, retries, breakers, fallbacks, hedging."""
