"""Fleet polling across processes and machines with taskiq and taskiq-redis.

``worker.py`` defines the broker and the ``fetch_qr`` task; ``produce.py`` enqueues one task
per instance name and waits for every result. See ``README.md`` in this folder.
Needs the ``fleet`` extra: ``pip install -e '.[fleet]'``.
"""
