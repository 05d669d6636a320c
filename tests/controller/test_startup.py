"""The start-up phase marks (controller/startup.py)."""

from __future__ import annotations

from controller.startup import Startup


def test_marks_are_seconds_since_the_start_and_the_first_of_a_name_counts(monkeypatch) -> None:
    clock = iter([100.0, 103.25, 109.5, 111.0])
    monkeypatch.setattr("controller.startup.time.time", lambda: next(clock))
    s = Startup()
    s.mark("validated")
    s.mark("ray")
    s.mark("validated")  # a later mark of the same phase is ignored
    assert s.marks == {"validated": 3.25, "ray": 9.5}
    assert s.line() == ("started in 9.5 s (ready at, from the command's start: "
                        "validated 3.2 s, ray 9.5 s)")
