"""The documentation's build scripts (``python -m docs.gallery``, ``python -m docs.check_api``)."""
