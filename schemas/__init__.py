"""Schemas: job files, AMQP message bodies, device dictionaries, and the error taxonomy.

This package imports nothing else of lavamq; every other package may import it.
"""
