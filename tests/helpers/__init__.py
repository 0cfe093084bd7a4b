"""Test helpers, in one place: no test module imports another."""
