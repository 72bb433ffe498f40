"""Which OpenAI-style service to talk to, built from the standard environment variables. No dagster import here.

Azure OpenAI: ``AZURE_OPENAI_ENDPOINT`` + ``AZURE_OPENAI_API_KEY`` (or an Entra ID token
provider) + ``OPENAI_API_VERSION``; OpenAI: ``OPENAI_API_KEY``; any OpenAI-compatible server
(vLLM, Ollama): ``OPENAI_BASE_URL`` (+ ``OPENAI_API_KEY`` if it wants one). Keys are held only
in memory, never logged, and never part of what ``describe`` returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Provider = Literal["azure", "openai", "compatible"]
CREDENTIAL_VARIABLES = (
    "AZURE_OPENAI_ENDPOINT + AZURE_OPENAI_API_KEY + OPENAI_API_VERSION (Azure OpenAI), "
    "OPENAI_API_KEY (OpenAI) or OPENAI_BASE_URL (an OpenAI-compatible server)"
)
DEFAULT_API_VERSION = "2025-04-01-preview"


class NotConfigured(RuntimeError):
    """No credentials are set; the message names the environment variables to set."""


@dataclass(frozen=True)
class ClientSettings:
    """Where requests go and how they authenticate (the key is excluded from ``repr``)."""

    azure_endpoint: str | None = None
    api_key: str | None = None
    api_version: str | None = None
    base_url: str | None = None
    token_provider: Callable[[], str] | None = None
    timeout_s: float = 60.0

    def __repr__(self) -> str:
        return f"ClientSettings(provider={self.provider!r}, endpoint={self.endpoint!r})"

    @property
    def provider(self) -> Provider | None:
        """Which kind of service the settings point at, or None when nothing is configured."""
        if self.azure_endpoint and (self.api_key or self.token_provider):
            return "azure"
        if self.base_url:
            return "compatible"
        if self.api_key:
            return "openai"
        return None

    @property
    def endpoint(self) -> str | None:
        """The service address (no secret in it)."""
        return self.azure_endpoint or self.base_url or ("https://api.openai.com/v1" if self.api_key else None)

    def require(self) -> Provider:
        """Return the provider, or raise ``NotConfigured`` naming the variables to set."""
        provider = self.provider
        if provider is None:
            raise NotConfigured(f"no OpenAI/Azure OpenAI credentials: set {CREDENTIAL_VARIABLES}")
        return provider

    def describe(self) -> dict[str, Any]:
        """Return where requests go, for logs and metadata (never the key)."""
        return {"provider": self.provider or "none", "endpoint": self.endpoint, "api_version": self.api_version}


def sync_client(settings: ClientSettings, max_retries: int = 0) -> Any:
    """Return an ``openai.AzureOpenAI`` or ``openai.OpenAI`` client for ``settings``."""
    import openai

    provider = settings.require()
    if provider == "azure":
        return openai.AzureOpenAI(**_azure_kwargs(settings), max_retries=max_retries)
    return openai.OpenAI(**_openai_kwargs(settings), max_retries=max_retries)


def async_client(settings: ClientSettings, max_retries: int = 0) -> Any:
    """Return an ``openai.AsyncAzureOpenAI`` or ``openai.AsyncOpenAI`` client for ``settings``."""
    import openai

    provider = settings.require()
    if provider == "azure":
        return openai.AsyncAzureOpenAI(**_azure_kwargs(settings), max_retries=max_retries)
    return openai.AsyncOpenAI(**_openai_kwargs(settings), max_retries=max_retries)


def _azure_kwargs(settings: ClientSettings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "azure_endpoint": settings.azure_endpoint,
        "api_version": settings.api_version or DEFAULT_API_VERSION,
        "timeout": settings.timeout_s,
    }
    if settings.api_key:
        kwargs["api_key"] = settings.api_key
    else:
        kwargs["azure_ad_token_provider"] = settings.token_provider
    return kwargs


def _openai_kwargs(settings: ClientSettings) -> dict[str, Any]:
    return {"api_key": settings.api_key or "unused", "base_url": settings.base_url, "timeout": settings.timeout_s}
