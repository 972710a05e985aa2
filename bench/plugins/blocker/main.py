import asyncio
import time

from astr_ray.plugins import Context, Plugin

plugin = Plugin()


@plugin.command("await5")
async def await5(ctx: Context) -> str:
    await asyncio.sleep(5)
    return "done"


@plugin.command("thread5")
def thread5(ctx: Context) -> str:
    """A plain function: runs in a thread, off the host's event loop."""
    time.sleep(5)
    return "done"


@plugin.command("stall5")
async def stall5(ctx: Context) -> str:
    """What AstrBot plugins do by mistake: block the event loop itself."""
    time.sleep(5)  # noqa: ASYNC251
    return "done"
