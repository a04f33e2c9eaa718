"""Federation: talking to other homeservers.

- `keyring`: our signing key's published form; other servers' verify keys (fetched, verified,
  cached in memory and in `server_keys`); JSON, request and event signature checks.
- `transport`: outbound HTTP — server discovery, X-Matrix signing, endpoint helpers.
"""
