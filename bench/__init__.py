"""Benchmarks: ``scripts/bench`` runs them; nothing here is part of the service."""
