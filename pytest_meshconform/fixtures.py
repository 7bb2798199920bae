"""meshconform's fixtures (registered by the plugin in pytest_configure)."""
