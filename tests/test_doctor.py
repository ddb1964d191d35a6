"""The doctor reports every offline data set as available, with no network, quickly."""
from __future__ import annotations

import time

from companion import doctor


def test_doctor_finds_everything_offline(no_network, capsys):
    start = time.perf_counter()
    status = doctor.doctor()
    seconds = time.perf_counter() - start
    out = capsys.readouterr().out
    print(out)
    assert status == 0, out
    assert "all data sets available" in out and "MISSING" not in out
    for name in doctor._datasets():
        assert f"ok       {name}" in out
    assert "device: cpu" in out or "device: cuda" in out or "device: mps" in out
    assert seconds < 30, f"the doctor took {seconds:.1f} s (measured under 10 s on 2 cores when idle)"
