pytest_plugins = ["citystream.testing"]
