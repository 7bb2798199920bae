"""``meshconform doctor``: can a cluster run meshconform, and what to fix (``cli.py``,
``report.py``)."""
