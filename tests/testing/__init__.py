"""Tests of the fake server, ``wachat_async.testing``: one module per source module."""
