"""``python -m wachat_async``: the ``wachat-qr`` command line.

The commands that draw or show progress need the ``cli`` extra; without it they print
``pip install 'wachat-async[cli]'`` and exit with status 2.
"""

from wachat_async.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
