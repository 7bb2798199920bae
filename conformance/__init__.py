"""meshconform's built-in mTLS conformance suites (shipped as `pytest_meshconform.conformance`)."""
