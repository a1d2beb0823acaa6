"""``cbir demo`` and the helpers that demos, tests and benchmarks share (bundled photos and their
edited copies, child server processes). Nothing that a server or a job imports lives here, and
the server images do not ship it."""
