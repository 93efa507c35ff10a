"""pytest plugin the mutation runner loads into every session it starts (``-p copy_guard``).

At the end of the session it writes, to the JSON file ``RWS_MUTATION_REPORT``, where ``rws`` was
imported from, which tests failed and which test modules failed to import. The runner uses it to

- refuse a passing session whose ``rws`` did not come from the mutated copy (``RWS_MUTATION_COPY``),
  or that never imported ``rws``: a mutation "survives" only when the copy was really under test;
- tell a broken import apart from a stale test selection: when a selected test module fails to import
  (the mutant broke it), pytest ends node-id selections with "found no collectors" and exit status 4,
  the same as for a node id that does not exist.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

_collect_errors: list[str] = []
_failed: list[str] = []


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        _collect_errors.append(report.nodeid)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed and report.nodeid not in _failed:
        _failed.append(report.nodeid)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get("RWS_MUTATION_REPORT")
    if not path:
        return
    mod = sys.modules.get("rws")
    with open(path, "w") as f:
        json.dump({"rws_file": getattr(mod, "__file__", None) if mod is not None else None,
                   "collect_errors": _collect_errors, "failed": _failed, "exitstatus": int(exitstatus)}, f)
