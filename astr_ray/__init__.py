"""astr-ray: a multi-platform LLM-agent chatbot runtime on supervised Ray actors.

The public surface is what ``__all__`` lists; everything else may change.
"""

from astr_ray.config import Config, ProviderConfig, load_config, parse_config
from astr_ray.errors import (
    AstrRayError,
    ConfigError,
    MessageFormatError,
    ProviderError,
    SessionError,
    StoreError,
)
from astr_ray.message import (
    ChatType,
    Event,
    File,
    Image,
    Mention,
    Reply,
    ReplyTo,
    Sender,
    SessionKey,
    Text,
    Voice,
    make_session_key,
    parse_session_key,
)

__version__ = "0.1.0"

__all__ = [
    "AstrRayError",
    "ChatType",
    "Config",
    "ConfigError",
    "Event",
    "File",
    "Image",
    "Mention",
    "MessageFormatError",
    "ProviderConfig",
    "ProviderError",
    "Reply",
    "ReplyTo",
    "Sender",
    "SessionError",
    "SessionKey",
    "StoreError",
    "Text",
    "Voice",
    "__version__",
    "load_config",
    "make_session_key",
    "parse_config",
    "parse_session_key",
]
