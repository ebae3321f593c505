"""A pytest plugin (loaded by conftest.py) for CI runs (CI set in the environment).

Every test runs there but the CuPy ones (marked gpu: no GPU): any other skip fails the run, named
with its reason, so that a test whose dependency went missing cannot pass unseen. The oracle tests
(marked oracle: against PyTorch or the authors' AutoAttack) are named with their outcome.
"""
import os

import pytest


def pytest_sessionfinish(session):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if not os.environ.get("CI") or reporter is None:
        return
    reports = [r for key in ("passed", "failed", "skipped") for r in reporter.stats.get(key, [])]
    oracle = [r for r in reports if "oracle" in getattr(r, "keywords", {})
              and (r.when == "call" or r.skipped)]
    reporter.ensure_newline()
    if oracle:
        reporter.write_sep("-", "oracle tests")
        for r in oracle:
            reporter.write_line(f"{r.outcome.upper()} {r.nodeid}")
    skipped = [r for r in reporter.stats.get("skipped", [])
               if "gpu" not in getattr(r, "keywords", {})]
    if skipped:
        reporter.write_sep("-", "skipped under CI, where only the gpu tests may skip", red=True)
        for r in skipped:
            reason = r.longrepr[-1] if isinstance(r.longrepr, tuple) else r.longrepr
            reporter.write_line(f"SKIPPED {r.nodeid}: {reason}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
