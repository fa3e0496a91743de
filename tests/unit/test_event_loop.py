"""EVENT_LOOP: uvloop by default on Linux, asyncio's own loop when asked for."""

from __future__ import annotations

import asyncio
import gc
import sys

import pytest

from gateway.lifecycle import GC_THRESHOLDS, run, settle_memory
from gateway.settings import EventLoop, Settings


async def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uvloop is used on Linux only")
def test_uvloop_is_the_default_and_asyncio_can_be_chosen() -> None:
    assert Settings.model_fields["event_loop"].default is EventLoop.UVLOOP
    assert run(loop_module(), "uvloop").startswith("uvloop")
    assert run(loop_module(), "asyncio").startswith("asyncio")


def test_settle_memory_freezes_start_up_objects_and_raises_the_threshold() -> None:
    before = gc.get_threshold()
    try:
        settle_memory()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == GC_THRESHOLDS
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
