"""Platform bridges: each turns one chat platform's protocol into ``Event``s for the
turn pipeline and sends its ``Reply``s back.

    OneBotBridge   QQ through a OneBot v11 implementation (NapCat, Lagrange...)
"""

from __future__ import annotations

from astr_ray.platforms.onebot import OneBotBridge

__all__ = ["OneBotBridge"]
