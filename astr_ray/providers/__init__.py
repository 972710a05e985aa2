"""LLM providers: transports (native OpenAI-compatible, litellm), permits, fallback chain."""

from astr_ray.providers.chain import ChainResult, ProviderChain, ProviderSlot
from astr_ray.providers.permits import Grant, Outcomes, PermitCache, PermitLedger
from astr_ray.providers.transport import ChatResult, ToolCall, Transport, make_transport

__all__ = [
    "ChainResult",
    "ChatResult",
    "Grant",
    "Outcomes",
    "PermitCache",
    "PermitLedger",
    "ProviderChain",
    "ProviderSlot",
    "ToolCall",
    "Transport",
    "make_transport",
]
