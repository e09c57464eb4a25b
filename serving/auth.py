"""Bearer-token auth of the ranking endpoint: only the token's SHA-256 reaches Serve, and requests are checked
against it in constant time. Without a configured token (``serve.auth_token_env`` unset) every request passes.
"""

import hashlib
import hmac
import os
from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from mixrec.pipelines.config import ConfigError, ServeConfig

bearer = HTTPBearer(auto_error=False, description="required when the server was started with serve.auth_token_env")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def token_digest(token: str) -> str:
    """Only the SHA-256 of the bearer token travels to Serve (deployment config), never the token."""
    return hashlib.sha256(token.encode()).hexdigest()


def configured_token_digest(serve: ServeConfig) -> str | None:
    """SHA-256 of the token in the environment variable ``serve.auth_token_env`` names (None: no auth)."""
    name = serve.auth_token_env
    if name is None:
        return None
    token = os.environ.get(name, "")
    if not token:
        raise ConfigError(f"serve.auth_token_env: environment variable {name} is unset or empty; "
                          f"set it to the bearer token, or remove serve.auth_token_env")
    return token_digest(token)


def check_bearer(credentials: HTTPAuthorizationCredentials | None, expected_sha256: str | None) -> None:
    """401 unless the presented bearer token hashes to ``expected_sha256`` (None: no token required)."""
    if expected_sha256 is None:
        return
    presented = token_digest(credentials.credentials) if credentials else ""
    if not hmac.compare_digest(presented, expected_sha256):
        raise HTTPException(401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                            headers={"WWW-Authenticate": "Bearer"})
