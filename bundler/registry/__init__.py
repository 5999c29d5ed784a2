"""The HTTP layer: `transport` (urllib3, TLS, proxies), `client` (the Distribution API with
auth and retries), `listing` (catalog and tag lists), `credentials` (docker's config.json)
and `connect` (a client from the registry options of the command line)."""
