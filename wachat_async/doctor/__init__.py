"""``wachat_async.doctor``: why no QR shows for an instance, step by step.

::

    from wachat_async import WachatClient
    from wachat_async.doctor import diagnose

    async with WachatClient() as client:
        report = await diagnose(client, "t1_mq9r2jov_jakarta_store")
    print(report)                  # one line per step, then the cause
    raise SystemExit(report.exit_status)

A layer on the public names of :mod:`wachat_async` only (as ``wachat_async.web`` is):
:func:`diagnose` takes a client rather than being one of its methods. ``wachat-qr doctor NAME``
prints the same report. The ``decode`` step needs the ``doctor`` extra (zxing-cpp and Pillow);
without it the step says it was skipped. The guide: docs/linking.md.
"""

from ._diagnose import DEFAULT_ROTATION_TIMEOUT, ROTATION_POLL, cause_of, diagnose
from ._report import Cause, Check, Diagnosis, Outcome, Step

__all__ = [
    "DEFAULT_ROTATION_TIMEOUT",
    "ROTATION_POLL",
    "Cause",
    "Check",
    "Diagnosis",
    "Outcome",
    "Step",
    "cause_of",
    "diagnose",
]
