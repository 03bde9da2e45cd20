"""Repository root conftest: makes `benchmarks.zoo` (shared model definitions) importable in tests."""
