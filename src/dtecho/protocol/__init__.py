"""The wire schema: request and response models of the HTTP API and Server-Sent Events framing.

Shared by the server (which validates requests with it) and the services below it (which
take validated requests), so neither has to import the other's package.
"""
