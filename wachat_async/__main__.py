"""``python -m wachat_async``: the ``wachat-qr`` command line."""

from wachat_async.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
