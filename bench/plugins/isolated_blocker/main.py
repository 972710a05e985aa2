import time

from astr_ray.plugins import Context, Plugin

plugin = Plugin()


@plugin.command("istall5")
async def istall5(ctx: Context) -> str:
    time.sleep(5)  # noqa: ASYNC251 - blocks this plugin's own process only
    return "done"
