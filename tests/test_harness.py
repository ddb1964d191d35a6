"""The notebook-execution harness itself (tests/_course.py): polling and timing helpers."""
from __future__ import annotations

import asyncio
import time
from queue import Empty

import nbformat
import pytest

from _course import _poll_in_slices, cell_seconds, slowest_cells


class MissesFirstWakeUp:
    """A kernel channel whose first poll misses a message that is already there (pyzmq's
    occasional missed edge), sitting out its whole timeout; a fresh poll sees it at once."""

    def __init__(self, message=None):
        self.message, self.polls = message, 0

    async def get_msg(self, timeout=None):
        self.polls += 1
        if self.polls == 1 or self.message is None:
            await asyncio.sleep(timeout)
            raise Empty
        return self.message


def test_a_missed_wake_up_costs_one_slice_not_the_whole_timeout():
    channel = MissesFirstWakeUp({"msg_type": "execute_reply"})
    _poll_in_slices(channel, step=0.05)
    start = time.monotonic()
    msg = asyncio.run(channel.get_msg(timeout=30))
    assert msg["msg_type"] == "execute_reply"
    assert time.monotonic() - start < 1.0 and channel.polls == 2


def test_an_empty_channel_still_times_out_at_the_callers_deadline():
    channel = MissesFirstWakeUp(None)
    _poll_in_slices(channel, step=0.05)
    start = time.monotonic()
    with pytest.raises(Empty):
        asyncio.run(channel.get_msg(timeout=0.3))
    assert 0.25 <= time.monotonic() - start < 1.0 and channel.polls >= 5


def test_slowest_cells_reads_nbclients_timing_metadata():
    nb = nbformat.v4.new_notebook()
    for seconds, source in [(1.5, "train()"), (0.2, "plot()"), (7.25, "search()\nmore()")]:
        cell = nbformat.v4.new_code_cell(source)
        cell.metadata["execution"] = {"iopub.execute_input": "2026-12-07T10:00:00.000000Z",
                                      "shell.execute_reply": f"2026-12-07T10:00:{seconds:09.6f}Z"}
        nb.cells.append(cell)
    nb.cells.append(nbformat.v4.new_code_cell("never run"))
    assert cell_seconds(nb) == [(7.25, 2), (1.5, 0), (0.2, 1)]
    assert slowest_cells(nb, 2) == "cell 2 7.2 s ('search()'); cell 0 1.5 s ('train()')"
