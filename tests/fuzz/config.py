"""What the spec fuzzer covers, and how it treats the server (see run_fuzz.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
SPEC_ROOT = REPO_ROOT / ".." / "shared" / "matrix-spec"
CS_DIR = SPEC_ROOT / "data" / "api" / "client-server"

# Spec files not fuzzed at all: areas Nexa does not implement by design. Other operations that
# are not implemented (yet) are found by a probe (404/405 M_UNRECOGNIZED) and get a few requests.
SKIP_FILES = {
    "administrative_contact.yaml": "3PID / identity-server binding (not implemented)",
    "sso_login_redirect.yaml": "SSO redirects (not implemented)",
}
# Single operations not fuzzed: identity-server token requests (3PID; not implemented).
SKIP_PATH_SUFFIXES = ("/requestToken",)

# Operations that end sessions or accounts: run with a throwaway user, re-registered as needed.
DESTRUCTIVE = {
    ("POST", "/logout"), ("POST", "/logout/all"), ("POST", "/account/deactivate"),
    ("POST", "/account/password"), ("DELETE", "/devices/{deviceId}"), ("POST", "/delete_devices"),
}

# The fuzzed server talks to no other server: generated IDs name hosts such as example.com or
# matrix.org, and a test must not reach out to them. Every remote destination is refused by
# config (the refusal paths are exercised instead).
HERMETIC_CONFIG: dict[str, Any] = {"federation": {"allow": []}}

WRITE_METHODS = {"PUT", "POST", "DELETE", "PATCH"}
REQUEST_TIMEOUT = 15.0
